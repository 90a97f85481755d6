"""NaturalSpikeDataset (natural images, a new camera per draw), the exposure-normalised network, the held-out
evaluation and the reconstruction API, on small data the tests make."""
import numpy as np
import pytest
import torch
from pipeline_helpers import write_dpdd_tree

from despike_basicsr.archs.despike_arch import DeSpikeNet, display_scale, exposure_level
from despike_basicsr.data.natural_spike_dataset import DEFAULT_RANGES, NaturalSpikeDataset, draw_sensor
from despike_basicsr.data.scenes import generate_scene, synthetic_depth_map
from despike_basicsr.spike import camera

SIZE = 48
TINY = dict(num_feat=8, windows=[16, 32], num_kernels=3, kernel_size=5, num_scales=2, num_blocks=1, num_heads=2)


@pytest.fixture(scope='module')
def dpdd_root(tmp_path_factory):
    root = tmp_path_factory.mktemp('natural')
    write_dpdd_tree(root, SIZE, SIZE + 16, count=2, seed=70)
    return root


def _opt(root, **extra):
    opt = {'dpdd_root': str(root), 'split': 'train', 'phase': 'train', 'gt_size': 32, 'temporal_len': 40,
           'use_flip': True, 'use_rot': True}
    opt.update(extra)
    return opt


def test_train_items_are_uint8_streams_with_their_exposure(dpdd_root):
    dataset = NaturalSpikeDataset(_opt(dpdd_root))
    item = dataset[0]
    assert item['lq'].dtype == torch.uint8 and item['lq'].shape == (40, 32, 32)
    assert set(item['lq'].unique().tolist()) <= {0, 1}
    assert item['gt'].shape == (1, 32, 32) and 0 <= float(item['gt'].min()) <= float(item['gt'].max()) <= 1
    assert item['gamma'].shape == (1, 32, 32)
    assert item['rate_per_unit'] > 0


def test_training_draws_cover_the_light_range_and_differ(dpdd_root):
    dataset = NaturalSpikeDataset(_opt(dpdd_root, rate_range=[0.02, 0.6], source_mix={'dpdd': 0.5, 'depth': 0.5}))
    rates = [float(dataset[i % 2]['lq'].float().mean()) for i in range(24)]
    assert min(rates) < 0.08 and max(rates) > 0.2  # log-uniform over 0.02-0.6 (bright crops may saturate less)
    assert len(set(round(r, 5) for r in rates)) > 20


def test_eval_items_are_deterministic_whole_frames(dpdd_root):
    opt = _opt(dpdd_root, split='val', phase='val', val_len=40, eval_sensor={'mean_rate': 0.2})
    first, second = NaturalSpikeDataset(opt)[1], NaturalSpikeDataset(opt)[1]
    assert first['lq'].shape == (40, SIZE, SIZE + 16)
    assert torch.equal(first['lq'], second['lq']) and torch.equal(first['gt'], second['gt'])
    assert abs(float(first['lq'].float().mean()) - 0.2) < 0.05


def test_synthetic_defocus_source_blurs_the_sharp_image(dpdd_root):
    dataset = NaturalSpikeDataset(_opt(dpdd_root, source_mix={'depth': 1.0}, use_flip=False, use_rot=False))
    sharp, _ = dataset._load(0)
    blurred = dataset._synthetic_defocus(sharp, (0, 32, 0, 32), np.random.default_rng(0))
    assert blurred.shape == (32, 32)
    assert np.abs(np.diff(blurred, axis=1)).mean() < np.abs(np.diff(sharp[:32, :32], axis=1)).mean()


def test_dataset_option_errors(dpdd_root):
    with pytest.raises(ValueError, match='source_mix'):
        NaturalSpikeDataset(_opt(dpdd_root, source_mix={'blur': 1.0}))
    with pytest.raises(ValueError, match='gain_std_range'):
        NaturalSpikeDataset(_opt(dpdd_root, gain_std_range=[0.1, 0.0]))
    with pytest.raises(KeyError, match='dpdd_root'):
        NaturalSpikeDataset({'phase': 'train'})


def test_sensor_draws_stay_in_their_ranges():
    rng = np.random.default_rng(0)
    for _ in range(50):
        sensor = draw_sensor(rng, DEFAULT_RANGES)
        assert DEFAULT_RANGES['rate_range'][0] <= sensor['mean_rate'] <= DEFAULT_RANGES['rate_range'][1]
        assert DEFAULT_RANGES['gain_std_range'][0] <= sensor['gain_std'] <= DEFAULT_RANGES['gain_std_range'][1]


def test_light_for_mean_rate_hits_the_rate():
    scene = np.random.default_rng(0).uniform(0.05, 0.3, (32, 32)).astype(np.float32)
    light = camera.light_for_mean_rate(scene, 0.1, threshold=2.0, eta=0.8)
    spikes = camera.simulate(scene * light, 400, threshold=2.0, eta=0.8, seed=0)
    assert abs(spikes.mean() - 0.1) < 0.005
    bright = np.percentile(scene, 99.5)  # highlights are kept below saturation
    assert camera.light_for_mean_rate(scene, 0.99) * bright * 0.5 == pytest.approx(0.95)


def test_synthetic_depth_map_is_deterministic_and_in_range():
    a = synthetic_depth_map(20, 30, np.random.default_rng(3), (1.0, 5.0))
    b = synthetic_depth_map(20, 30, np.random.default_rng(3), (1.0, 5.0))
    np.testing.assert_array_equal(a, b)
    assert a.min() >= 1.0 - 1e-6 and a.max() <= 5.0 + 1e-5 and a.std() > 0


# ----------------------------------------------------------------------------------------------------------------------
# Exposure-normalised network


def test_exposure_level_and_display_scale_follow_their_equations():
    rates = torch.rand(2, 1, 6, 5)
    level = exposure_level(rates)
    torch.testing.assert_close(level[:, 0, 0, 0], rates.mean(dim=(1, 2, 3)))
    torch.testing.assert_close(exposure_level(4 * rates), 4 * level)
    torch.testing.assert_close(display_scale(level, 0.5, 2.2), (level / 0.5)**(1 / 2.2))


def test_a_scene_at_four_times_less_light_gives_the_same_image_up_to_display_scale():
    """γ multiplies the integrated potential, exactly as 4× less light would (noise aside): the output must be the
    same image, 4^(−1/γ) darker."""
    torch.manual_seed(0)
    net = DeSpikeNet(**TINY).eval()
    spikes = (torch.rand(1, 32, 16, 16) < 0.4).to(torch.uint8)
    with torch.no_grad():
        bright = net(spikes)
        dim = net(spikes, torch.full((1, 1, 16, 16), 0.25))
    torch.testing.assert_close(dim, bright * 4**(-1 / 2.2), rtol=1e-4, atol=1e-6)
    unnormalised = DeSpikeNet(**TINY, exposure_norm=False).eval()
    with torch.no_grad():
        assert not torch.allclose(unnormalised(spikes, torch.full((1, 1, 16, 16), 0.25)),
                                  unnormalised(spikes) * 4**(-1 / 2.2), rtol=1e-2, atol=1e-3)


def test_simulated_dimmer_stream_reconstructs_to_a_darker_copy():
    """Physically simulated: the same scene at 4× less light, long streams so that shot noise is small."""
    torch.manual_seed(0)
    net = DeSpikeNet(**TINY).eval()
    scene = generate_scene(32, 32, 5)[0]
    streams = [camera.simulate(scene * light, 32, seed=1) for light in (1.6, 0.4)]
    with torch.no_grad():
        bright, dim = (net(torch.from_numpy(s)[None]) for s in streams)
    ratio = float(bright.mean() / dim.mean())
    assert abs(ratio - 4**(1 / 2.2)) < 0.2 * 4**(1 / 2.2)


def test_given_exposure_overrides_the_inputs_own():
    torch.manual_seed(0)
    net = DeSpikeNet(**TINY).eval()
    spikes = (torch.rand(1, 32, 16, 16) < 0.3).to(torch.uint8)
    with torch.no_grad():
        own = net(spikes)
        same = net(spikes, exposure=net.stream_exposure(spikes))
        other = net(spikes, exposure=2 * net.stream_exposure(spikes))
    torch.testing.assert_close(own, same)
    assert not torch.allclose(own, other)


def test_unshuffled_network_keeps_odd_sizes_and_full_resolution_outputs():
    net = DeSpikeNet(**TINY, unshuffle=2)
    out, grid = net((torch.rand(1, 32, 13, 11) < 0.3).to(torch.uint8), return_intermediates=True)
    assert out.shape == (1, 1, 13, 11)
    assert [g.shape[-2:] for g in grid[-1]] == [(7, 6), (13, 11)]
    assert net.size_multiple == 4


def test_items_flag_whether_their_target_is_the_scene_that_fired(dpdd_root):
    real = NaturalSpikeDataset(_opt(dpdd_root, source_mix={'dpdd': 1.0}))
    synthetic = NaturalSpikeDataset(_opt(dpdd_root, source_mix={'depth': 0.5, 'sharp': 0.5}))
    assert {real[i % len(real)]['photometric'] for i in range(4)} == {0.0}
    assert {synthetic[i % len(synthetic)]['photometric'] for i in range(4)} == {1.0}
