"""Do no harm (issue 28): DeSpikeNet as a correction of plain reconstructions, training data that cannot teach a
photometric change (in-focus draws, the smooth gain field of real pairs), moving scenes, and the do-no-harm evaluation,
on small data the tests make."""
import os.path as osp

import cv2
import numpy as np
import pytest
import torch
from pipeline_helpers import write_dpdd_tree

from despike_basicsr.archs.despike_arch import (DeSpikeNet, gated_plain_reconstruction, plain_display,
                                                smoothed_plain_display)
from despike_basicsr.checkpoint import CheckpointError, check_fits
from despike_basicsr.data.motion import DEFAULT_MOTION, MotionPath, MovingScene, draw_motion, motion_ranges
from despike_basicsr.data.natural_spike_dataset import NaturalSpikeDataset
from despike_basicsr.data.preparation import scoring_holdout, smooth_gain_field
from despike_basicsr.data.scenes import generate_scene
from despike_basicsr.evaluation import heldout, no_harm
from despike_basicsr.spike.io import write_dat

SIZE = 64
TINY = dict(num_feat=8, windows=[8, 32], num_kernels=3, kernel_size=5, num_scales=2, num_blocks=1, num_heads=2)


def _still_stream(rate: np.ndarray, steps: int, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy((rng.random((steps, ) + rate.shape) < rate).astype(np.uint8))[None]


# --- the network ---------------------------------------------------------------------------------------------------


def test_untrained_residual_network_returns_the_long_window_average():
    torch.manual_seed(0)
    net = DeSpikeNet(**TINY, base_windows=[8, 16, 32]).eval()
    rate = np.random.default_rng(1).uniform(0.05, 0.6, (20, 28))
    spikes = _still_stream(rate, 32)
    with torch.no_grad():
        out = net(spikes)
    average = spikes.float().mean(1, keepdim=True)
    expected = (average / 0.5)**(1 / 2.2)  # the reference camera's display of the 32-step average
    assert out.shape == (1, 1, 20, 28)
    assert float((out - expected).abs().max()) < 0.02 * float(expected.max())


def test_direct_network_does_not_return_the_average():
    """The check above can fail: a network predicting the image directly is nowhere near the average untrained."""
    torch.manual_seed(0)
    net = DeSpikeNet(**TINY).eval()
    spikes = _still_stream(np.full((20, 28), 0.3), 32)
    with torch.no_grad():
        out = net(spikes)
    assert float((out - (0.3 / 0.5)**(1 / 2.2)).abs().mean()) > 0.05


def test_gated_reconstruction_is_a_correction_on_a_convex_mix():
    plains = torch.stack([torch.full((1, 4, 4), 0.2), torch.full((1, 4, 4), 0.8)], dim=1)
    head = torch.zeros(1, 3, 4, 4)
    prior = torch.tensor([0.0, 0.0]).reshape(1, 2, 1, 1)
    assert torch.allclose(gated_plain_reconstruction(head, plains, prior), torch.full((1, 1, 4, 4), 0.5))
    head[:, 1] = 20.0  # all weight on the first window, plus a correction
    head[:, 0] = 0.1
    assert torch.allclose(gated_plain_reconstruction(head, plains, prior), torch.full((1, 1, 4, 4), 0.3), atol=1e-6)
    assert torch.equal(plain_display(torch.tensor([-1.0, 1.0]), 2.0), torch.tensor([0.0, 1.0]))


def test_residual_network_trains_its_zero_heads_and_reads_exposure():
    torch.manual_seed(0)
    net = DeSpikeNet(**TINY, base_windows=[8, 32])
    spikes = _still_stream(np.full((16, 16), 0.3), 32)
    out, grid = net(spikes, return_intermediates=True)
    assert len(grid) == 2 and grid[-1][0].shape == (1, 1, 8, 8)
    out.mean().backward()
    assert float(net.levels[-1].head[0].weight.grad.abs().sum()) > 0
    assert net.frames_needed == 32
    brighter = DeSpikeNet(**TINY, base_windows=[8, 32]).eval()
    with torch.no_grad():  # an exposure-normalised network scales its output, plains included, with the light
        ratio = brighter(_still_stream(np.full((16, 16), 0.4), 32)).mean() / brighter(spikes).mean()
    assert abs(float(ratio) - (0.4 / 0.3)**(1 / 2.2)) < 0.03


def test_base_windows_are_checked():
    with pytest.raises(ValueError, match='base_windows'):
        DeSpikeNet(**TINY, base_windows=[0, 16])


# --- data ----------------------------------------------------------------------------------------------------------


def test_moving_scene_is_the_identity_at_the_centre_and_moves_as_drawn():
    rng = np.random.default_rng(0)
    canvas = rng.random((96 + 2 * 16, 96 + 2 * 16)).astype(np.float32)
    path = MotionPath((0.5, -0.25), 0.0, 0.0, False, (0.0, 0.0), (10.0, 10.0), 0.0, (0.0, 0.0))
    scene = MovingScene(canvas, canvas, 96, path, centre_step=20)
    frames = scene.frames(np.array([20, 28]))
    assert np.array_equal(frames[0], canvas[16:112, 16:112]) and np.array_equal(scene.target(), frames[0])
    # 8 steps later the view has moved by (+4, -2) px: x_src = x + v·τ
    assert np.allclose(frames[1][4:-4, 4:-4], canvas[14:110, 20:116][4:-4, 4:-4], atol=1e-5)


def test_moving_layer_moves_independently_of_the_frame():
    rng = np.random.default_rng(1)
    canvas = rng.random((128, 128)).astype(np.float32)
    path = MotionPath((0.0, 0.0), 0.0, 0.0, True, (1.0, 0.0), (12.0, 12.0), 0.0, (20.0, 0.0))
    scene = MovingScene(canvas, canvas, 96, path, centre_step=10)
    still, later = scene.frames(np.array([10, 20]))
    background = canvas[16:112, 16:112]
    changed = np.abs(later - background) > 1e-6
    assert changed[40:56, 55:60].all()  # the layer's centre has moved 10 px to the right
    assert not changed[:20].any() and not changed[-20:].any()  # the frame itself does not move


def test_drawn_motion_stays_inside_the_margin():
    rng = np.random.default_rng(2)
    fast = motion_ranges({'speed_range': [1.0, 2.0]})
    for _ in range(20):
        path = draw_motion(rng, fast, 128, 96)
        assert np.hypot(*path.velocity) * 96 <= 48 + 1e-6
    with pytest.raises(ValueError, match='unknown key'):
        motion_ranges({'sped_range': [0.1, 0.2]})
    with pytest.raises(ValueError, match='increasing'):
        motion_ranges({'speed_range': [0.3, 0.1]})
    assert set(DEFAULT_MOTION) == set(motion_ranges(None))


def test_smooth_gain_field_recovers_a_vignetting_through_defocus():
    intensity, _ = generate_scene(96, 128, 3)
    yy, xx = np.mgrid[0:96, 0:128]
    vignette = (1.0 - 0.25 * (((yy - 48) / 48.0)**2 + ((xx - 64) / 64.0)**2)).astype(np.float32)
    blurred = cv2.GaussianBlur(intensity, (0, 0), 3.0) * vignette * 1.1
    field = smooth_gain_field(intensity, blurred, smoothing=6.0)
    inner = (slice(12, -12), slice(12, -12))
    error = field[inner] / (vignette[inner] * 1.1) - 1.0
    nothing = 1.0 / (vignette[inner] * 1.1) - 1.0  # a field of ones: the difference left in the target
    assert np.sqrt(np.mean(error**2)) < 0.02 and np.abs(error).max() < 0.05
    assert np.sqrt(np.mean(error**2)) < 0.3 * np.sqrt(np.mean(nothing**2))
    flat = smooth_gain_field(intensity, cv2.GaussianBlur(intensity, (0, 0), 3.0), smoothing=6.0)
    assert np.abs(flat[inner] - 1.0).max() < 0.04  # defocus alone is no photometric change


def test_scoring_holdout_is_a_fixed_fifth():
    pairs = [(f's{i:02d}', f't{i:02d}') for i in range(60)]
    held = scoring_holdout(list(reversed(pairs)))
    assert len(held) == 12 and held[0] == ('s04', 't04') and held[-1] == ('s59', 't59')


@pytest.fixture(scope='module')
def dpdd_root(tmp_path_factory):
    root = tmp_path_factory.mktemp('noharm')
    write_dpdd_tree(root, SIZE + 100, SIZE + 110, count=5, seed=40)
    return root


def test_selection_scenes_are_the_scoring_holdout_in_three_conditions(dpdd_root):
    from despike_basicsr.data.preparation import dpdd_pairs
    held = scoring_holdout(dpdd_pairs(str(dpdd_root), 'train'))
    scenes = no_harm.selection_scenes(str(dpdd_root), count=6)
    assert {s.key for s in scenes} == {osp.splitext(osp.basename(t))[0] for _, t in held} and len(held) == 1
    assert [s.set_name for s in scenes][:2] == ['dpdd-selection', 'dpdd-selection in focus']
    assert no_harm.condition_of(scenes[0].set_name) == 'defocused' and scenes[1].blurred is scenes[1].sharp


def test_selection_textures_add_photographs_in_focus_and_moving_but_never_held_out_ones(dpdd_root):
    base = no_harm.selection_scenes(str(dpdd_root), count=6)
    scenes = no_harm.selection_scenes(str(dpdd_root), count=6, textures=('coins', 'moon'))
    added = [s for s in scenes if s.set_name.startswith('textures')]
    assert [(s.set_name, s.key) for s in scenes if s not in added] == [(s.set_name, s.key) for s in base]
    # coins (303 x 384) is too small for the moving crop and its margin: in focus only
    assert sorted((s.set_name, s.key) for s in added) == [
        ('textures in focus', 'coins'), ('textures in focus', 'moon'), ('textures moving', 'moon')]
    by = {(no_harm.condition_of(s.set_name), s.key): s for s in added}
    assert by[('in focus', 'moon')].blurred is by[('in focus', 'moon')].sharp
    assert by[('moving', 'moon')].motion is not None
    assert set(no_harm.SELECTION_TEXTURES).isdisjoint(heldout.SKIMAGE_SCENES)
    with pytest.raises(ValueError, match=r"\['chelsea'\] are held-out photographs"):
        no_harm.selection_scenes(str(dpdd_root), count=6, textures=('coins', 'chelsea'))


def _opt(root, **extra):
    opt = {'dpdd_root': str(root), 'split': 'train', 'phase': 'train', 'gt_size': 32, 'temporal_len': 32,
           'gamma_probability': 0.0, 'gain_std_range': [0.0, 0.0], 'electrons_range': [1e6, 1e6]}
    opt.update(extra)
    return opt


def test_in_focus_draws_see_the_target_itself(dpdd_root):
    dataset = NaturalSpikeDataset(_opt(dpdd_root, source_mix={'sharp': 1.0}, rate_range=[0.3, 0.3], temporal_len=64))
    item = dataset[0]
    rate = item['lq'].float().mean(0)
    linear = item['gt'][0].numpy()**2.2
    corr = np.corrcoef(rate.numpy().ravel(), linear.ravel())[0, 1]
    assert corr > 0.9  # the spikes came from the target (a defocused twin would blur them)


def test_moving_draws_change_over_the_window(dpdd_root):
    dataset = NaturalSpikeDataset(_opt(dpdd_root, source_mix={'sharp': 1.0}, motion_probability=1.0,
                                       motion={'speed_range': [0.4, 0.5]}, rate_range=[0.4, 0.4], temporal_len=96))
    item = dataset[1]
    assert item['lq'].shape == (96, 32, 32)
    early, late = item['lq'][:32].float().mean(0), item['lq'][-32:].float().mean(0)
    centre = item['lq'][32:64].float().mean(0)
    truth = torch.from_numpy(item['gt'][0].numpy()**2.2)
    assert float((early - late).abs().mean()) > 0.04  # the scene moved
    assert np.corrcoef(centre.ravel(), truth.ravel())[0, 1] > np.corrcoef(early.ravel(), truth.ravel())[0, 1]


def test_scoring_holdout_is_excluded_and_bad_motion_refused(dpdd_root):
    assert len(NaturalSpikeDataset(_opt(dpdd_root, exclude_scoring_holdout=True))) == 4
    with pytest.raises(ValueError, match='motion_probability'):
        NaturalSpikeDataset(_opt(dpdd_root, motion_probability=1.5))
    small = NaturalSpikeDataset(_opt(dpdd_root, motion_probability=1.0, gt_size=128))
    with pytest.raises(ValueError, match='moving crop needs'):
        small[0]


# --- evaluation ----------------------------------------------------------------------------------------------------


def test_do_no_harm_rows_compare_each_condition_with_its_bar():
    rows = []
    cases = (('v in focus', 'tfp192', 30.0), ('v moving', 'tfp41', 20.0), ('v', 'defocused', 25.0))
    for set_name, bar, bar_value in cases:
        rows += [dict(set=set_name, key='a', level='bright', method=bar, psnr_fit=bar_value),
                 dict(set=set_name, key='a', level='bright', method='despike', psnr_fit=bar_value + 1.5)]
        rows.append(dict(set=set_name, key='a', level='bright', method='tfi', psnr_fit=0.0))
    harm = no_harm.harm_rows(rows)
    expected = {('in focus', 'tfp192'), ('moving', 'tfp41'), ('defocused', 'defocused')}
    assert {(h['condition'], h['bar']) for h in harm} == expected
    assert all(abs(h['diff'] - 1.5) < 1e-9 for h in harm)
    table = no_harm.harm_markdown(harm)
    assert '| v in focus | bright | tfp192 | 31.50 | 30.00 | +1.50 | +1.50 (a) |' in table


def test_moving_and_in_focus_scenes_evaluate_against_tfp(tmp_path):
    sharp, _ = generate_scene(96 + 96, 96 + 100, 5)
    base = [heldout.HeldoutScene('toy', 'k', sharp, cv2.GaussianBlur(sharp, (0, 0), 2.0))]
    scenes = no_harm.in_focus_scenes(base) + no_harm.moving_scenes(base, steps=48, size=96)
    assert [s.set_name for s in scenes] == ['toy in focus', 'toy moving'] and scenes[1].motion is not None
    report = heldout.evaluate(scenes, None, steps=48, levels={'bright': 0.3}, keep_images=0)
    by = {(r['set'], r['method']): r for r in report['rows']}
    # in focus, a long window beats a short one; the oracle is the truth itself
    assert by[('toy in focus', 'tfp192')]['psnr_fit'] > by[('toy in focus', 'tfp41')]['psnr_fit'] - 0.5
    assert by[('toy in focus', 'defocused')]['psnr'] > 60


def test_recordings_are_scored_in_linear_units(tmp_path):
    rng = np.random.default_rng(3)
    truth, _ = generate_scene(250, 400, 9)
    (tmp_path / 'spike').mkdir()
    (tmp_path / 'gt').mkdir()
    spikes = (rng.random((64, 250, 400)) < 0.6 * truth).astype(np.uint8)
    write_dat(str(tmp_path / 'spike' / 'c_key.dat'), spikes)
    cv2.imwrite(str(tmp_path / 'gt' / 'c_key.png'), np.round(truth * 255).astype(np.uint8))
    clips = no_harm.recording_clips(str(tmp_path))
    assert [c['key'] for c in clips] == ['c_key']
    perfect = no_harm.evaluate_recordings(clips, lambda s: truth**(1 / 2.2), windows=(41, ))
    by = {r['method']: r for r in perfect['rows']}
    assert by['despike']['psnr_fit'] > 45 > by['tfp41']['psnr_fit'] > 15
    with pytest.raises(FileNotFoundError, match='spike'):
        no_harm.recording_clips(str(tmp_path / 'missing'))


def test_motion_evidence_starts_silent_and_separates_still_from_moving():
    from despike_basicsr.archs.despike_arch import segment_deviations
    torch.manual_seed(0)
    plain = DeSpikeNet(**TINY, base_windows=[8, 32]).eval()
    with_motion = DeSpikeNet(**TINY, base_windows=[8, 32], motion_segments=4).eval()
    with_motion.load_state_dict(plain.state_dict(), strict=False)
    spikes = _still_stream(np.full((16, 16), 0.3), 32)
    with torch.no_grad():
        assert torch.equal(plain(spikes), with_motion(spikes))
    # an IF pixel watching a still scene: counts per part differ by about one spike; a step change: by far more
    still = torch.zeros(1, 32, 1, 2, dtype=torch.uint8)
    still[:, ::4] = 1
    moving = still.clone()
    moving[:, 16:] = 1
    norm = torch.ones(1, 1, 1, 1)
    quiet = segment_deviations(still, (0, 32), 4, None, norm).abs().max()
    loud = segment_deviations(moving, (0, 32), 4, None, norm).abs().max()
    assert float(quiet) < 1e-6 and float(loud) > 0.3
    with pytest.raises(ValueError, match='motion_segments'):
        DeSpikeNet(**TINY, motion_segments=-1)


def test_noise_evidence_starts_silent_and_falls_with_the_spike_count():
    from despike_basicsr.archs.despike_arch import count_noise_level
    torch.manual_seed(0)
    plain = DeSpikeNet(**TINY, base_windows=[8, 32], motion_segments=4).eval()
    with_noise = DeSpikeNet(**TINY, base_windows=[8, 32], motion_segments=4, noise_evidence=True).eval()
    with torch.no_grad():  # a trained network: no zero heads, so the features reach the image
        for param in plain.parameters():
            param.add_(0.05 * torch.randn_like(param))
    missing = with_noise.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert missing and all(key.startswith('noise_lift.') for key in missing)
    spikes = _still_stream(np.full((16, 16), 0.3), 32)
    with torch.no_grad():
        assert torch.equal(plain(spikes), with_noise(spikes))
        with_noise.noise_lift[-1].bias.fill_(0.1)  # a trained branch changes the image
        assert not torch.equal(plain(spikes), with_noise(spikes))
    counts = torch.zeros(1, 32, 1, 3, dtype=torch.uint8)
    counts[:, :, 0, 1] = 1  # 32 spikes
    counts[:, ::4, 0, 2] = 1  # 8 spikes
    nu = count_noise_level(counts, (0, 32)).flatten().tolist()
    assert nu == pytest.approx([1.0, 33**-0.5, 9**-0.5])


def test_smoothed_base_is_the_level_of_a_sparse_flat_region_where_the_pixel_base_is_biased_low():
    # a flat dark region firing 0.4 spikes per pixel per window: most pixels show nothing, a few one spike
    rate = np.full((48, 48), 0.4 / 192)
    spikes = _still_stream(rate, 192, seed=3)
    rates = spikes.float().mean(1, keepdim=True) / 0.05
    truth = (0.4 / 192 / 0.05)**(1 / 2.2)
    pixel = plain_display(rates, 2.2)[..., 12:-12, 12:-12]
    smooth = smoothed_plain_display(rates, [1.5, 4.0], 2.2)[..., 12:-12, 12:-12]
    assert smooth.shape[1] == 2
    assert pixel.mean() < 0.7 * truth  # the concave gamma of mostly-zero pixels
    assert abs(smooth[:, 1].mean() - truth) < 0.1 * truth  # averaged in linear units first: the level itself
    assert smooth[:, 1].std() < 0.25 * pixel.std() and smooth[:, 1].std() < smooth[:, 0].std()
    edge = torch.zeros(1, 1, 8, 40)
    edge[..., 20:] = 1.0
    across = smoothed_plain_display(edge, [1.5], 1.0)[0, 0, 4]
    assert across[0] == pytest.approx(0.0, abs=1e-6) and across[-1] == pytest.approx(1.0, abs=1e-6)  # reflected ends
    assert 0.3 < across[19] < 0.5 and 0.5 < across[20] < 0.7


def test_smoothed_bases_load_weights_saved_without_them_and_can_be_chosen():
    torch.manual_seed(2)
    gated = DeSpikeNet(**TINY, base_windows=[8, 32], noise_evidence=True, delta_gate=True).eval()
    with torch.no_grad():
        for param in gated.parameters():
            param.add_(0.05 * torch.randn_like(param))
    smoothing = DeSpikeNet(**TINY, base_windows=[8, 32], noise_evidence=True, delta_gate=True,
                           base_smoothing=[2.0]).eval()
    check_fits(smoothing, gated.state_dict(), 'gated.pth')
    smoothing.load_state_dict(gated.state_dict(), strict=True)
    rows = smoothing.levels[0].head[1].upscale_factor**2
    saved, loaded = gated.levels[0].head[0].weight, smoothing.levels[0].head[0].weight
    assert torch.equal(loaded[:3 * rows], saved[:3 * rows])  # correction and window logits
    assert torch.count_nonzero(loaded[3 * rows:4 * rows]) == 0  # the smoothed base's logit: zero
    assert torch.equal(loaded[4 * rows:], saved[3 * rows:])  # the gate, after it
    spikes = _still_stream(np.full((16, 16), 0.3), 32)
    shut = DeSpikeNet(**TINY, base_windows=[8, 32], noise_evidence=True, delta_gate=True, base_smoothing=[2.0],
                      smoothing_prior=-40.0).eval()
    shut.load_state_dict(gated.state_dict(), strict=True)
    with torch.no_grad():
        before, after = gated(spikes), smoothing(spikes)
        assert torch.allclose(shut(spikes), before, atol=1e-6)  # no head start: exactly the saved network
        assert 1e-4 < (after - before).abs().max() < 0.02  # head start 3: a few % of a smooth base in the mix
        for level in smoothing.levels:  # every logit to the smoothed base: the image is that base
            level.head[0].weight.zero_()
            level.head[0].bias.zero_()
            level.head[0].bias[3 * rows:4 * rows] = 50.0
        rates = spikes.float().mean(1, keepdim=True)
        expected = smoothed_plain_display(rates / rates.mean(), [2.0], 2.2) * (rates.mean() / 0.5)**(1 / 2.2)
        assert torch.allclose(smoothing(spikes), expected, atol=1e-4)
    with pytest.raises(ValueError, match='base_smoothing'):
        DeSpikeNet(**TINY, base_smoothing=[2.0])
    with pytest.raises(ValueError, match='base_smoothing'):
        DeSpikeNet(**TINY, base_windows=[8, 32], base_smoothing=[0.0])


def test_delta_gate_loads_ungated_weights_as_they_were_and_can_switch_the_correction_off():
    torch.manual_seed(1)
    plain = DeSpikeNet(**TINY, base_windows=[8, 32], noise_evidence=True).eval()
    with torch.no_grad():  # trained heads: a correction and window weights that are not the prior
        for param in plain.parameters():
            param.add_(0.05 * torch.randn_like(param))
    gated = DeSpikeNet(**TINY, base_windows=[8, 32], noise_evidence=True, delta_gate=True).eval()
    check_fits(gated, plain.state_dict(), 'ungated.pth')  # the project's loaders check the adapted weights
    with pytest.raises(CheckpointError, match='shape mismatches'):  # a real mismatch is still one
        check_fits(gated, DeSpikeNet(**TINY, base_windows=[8], noise_evidence=True).state_dict(), 'x.pth')
    gated.load_state_dict(plain.state_dict(), strict=True)  # the gate rows are appended as zeros
    spikes = _still_stream(np.linspace(0.1, 0.8, 256).reshape(16, 16), 32)
    with torch.no_grad():
        assert torch.allclose(plain(spikes), gated(spikes), atol=1e-6)
        for level in gated.levels:  # g = 2·σ(−30) ≈ 0: the correction is off, the window mix remains
            level.head[0].bias[-level.head[1].upscale_factor**2:] = -30.0
        for level in plain.levels:
            level.head[0].weight[:level.head[1].upscale_factor**2] = 0.0
            level.head[0].bias[:level.head[1].upscale_factor**2] = 0.0
        assert torch.allclose(plain(spikes), gated(spikes), atol=1e-5)
    head = torch.zeros(1, 4, 2, 2)
    head[:, 0] = 0.2
    head[:, 3] = 50.0  # g = 2: the gate can also strengthen a correction
    out = gated_plain_reconstruction(head, torch.full((1, 2, 2, 2), 0.5), torch.zeros(1, 2, 1, 1), delta_gate=True)
    assert torch.allclose(out, torch.full((1, 1, 2, 2), 0.9))
    with pytest.raises(ValueError, match='base_windows'):
        DeSpikeNet(**TINY, delta_gate=True)


def test_decibel_loss_weighs_every_sample_by_its_psnr():
    from despike_basicsr.losses.hierarchical_mse_loss import HierarchicalMSELoss
    loss = HierarchicalMSELoss(log_per_sample=True, temporal_weights=[1.0], log_eps=1e-8)
    target = torch.zeros(2, 1, 4, 4)
    output = torch.stack([torch.full((1, 4, 4), 0.1), torch.full((1, 4, 4), 0.01)])  # 20 dB and 40 dB samples
    assert abs(float(loss([[output]], target)) - (-30.0)) < 1e-3  # the mean of −20 and −40 dB
    output.requires_grad_(True)
    loss([[output]], target).backward()
    grads = output.grad.abs().flatten(1).mean(1)
    assert float(grads[1] / grads[0]) > 9  # the nearly perfect sample is not drowned by the poor one
    with pytest.raises(ValueError, match='log_eps'):
        HierarchicalMSELoss(log_per_sample=True, log_eps=0)


def test_shipped_weights_and_their_test_options_describe_the_same_network():
    """The quick start's benchmark builds the shipped network from options/test_despike_general.yml, strictly."""
    import yaml

    from despike_basicsr.inference.network import PRETRAINED_WEIGHTS
    stored = torch.load(PRETRAINED_WEIGHTS, map_location='cpu', weights_only=True)
    with open('options/test_despike_general.yml', encoding='utf-8') as f:
        options = yaml.safe_load(f)['network_g']
    net = DeSpikeNet(**{k: v for k, v in options.items() if k != 'type'})
    net.load_state_dict(stored['params'], strict=True)
    assert stored['network_g']['base_windows'] == options['base_windows']


def test_correction_strength_scales_the_correction_between_the_window_mix_and_the_trained_output(tmp_path):
    torch.manual_seed(2)
    net = DeSpikeNet(**TINY, base_windows=[8, 32], delta_gate=True).eval()
    with torch.no_grad():
        for param in net.parameters():
            param.add_(0.05 * torch.randn_like(param))
    spikes = _still_stream(np.linspace(0.1, 0.8, 256).reshape(16, 16), 32)
    outputs = {}
    with torch.no_grad():
        for strength in (0.0, 0.5, 1.0):
            net.correction_strength = strength
            outputs[strength] = net(spikes)
        net.correction_strength = 0.0
        rows = net.levels[0].head[1].upscale_factor**2
        for level in net.levels:  # the mix alone: the correction rows at zero
            level.head[0].weight[:rows] = 0.0
            level.head[0].bias[:rows] = 0.0
        mix = net(spikes)
    assert not torch.allclose(outputs[0.0], outputs[1.0], atol=1e-4)  # the correction does something
    assert torch.allclose(outputs[0.0], mix, atol=1e-6)
    assert torch.allclose(outputs[0.5], 0.5 * (outputs[0.0] + outputs[1.0]), atol=1e-5)

    from despike_basicsr.inference.network import ReconstructorError
    from despike_basicsr.inference.reconstructor import DeSpikeReconstructor
    weights = tmp_path / 'gated.pth'
    torch.save({'params': net.state_dict(),
                'network_g': dict(type='DeSpikeNet', **TINY, base_windows=[8, 32], delta_gate=True)}, weights)
    reconstructor = DeSpikeReconstructor(str(weights), device='cpu', correction_strength=0.25)
    assert reconstructor.net.correction_strength == 0.25
    for bad in (-0.1, 2.5, float('nan')):
        with pytest.raises(ReconstructorError, match='correction strength must be in'):
            DeSpikeReconstructor(str(weights), device='cpu', correction_strength=bad)
    direct = tmp_path / 'direct.pth'
    torch.save({'params': DeSpikeNet(**TINY).state_dict(), 'network_g': dict(type='DeSpikeNet', **TINY)}, direct)
    with pytest.raises(ReconstructorError, match='no correction to scale'):
        DeSpikeReconstructor(str(direct), device='cpu', correction_strength=0.5)
    assert DeSpikeReconstructor(str(direct), device='cpu').net.correction_strength == 1.0


def test_dead_zone_drops_small_corrections_and_shortens_large_ones():
    from despike_basicsr.archs.despike_arch import correction_dead_zone
    c = torch.tensor([-3.0, -1.0, -0.5, 0.0, 0.5, 1.0, 3.0]).reshape(1, 1, 1, 7)
    assert correction_dead_zone(c, 1.0).flatten().tolist() == [-2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 2.0]
    assert correction_dead_zone(c, 0.0) is c
    per_sample = correction_dead_zone(torch.cat([c, c]), torch.tensor([0.0, 2.0]).reshape(2, 1, 1, 1))
    assert torch.equal(per_sample[0], c[0]) and per_sample[1].flatten().tolist() == [-1.0] + [0.0] * 5 + [1.0]


def test_network_dead_zone_is_in_output_grey_levels_and_matches_the_sweeps_formula(tmp_path):
    """The network's τ (before its display scale) equals the sweep's S_τ on the outputs, at any light level."""
    torch.manual_seed(3)
    net = DeSpikeNet(**TINY, base_windows=[8, 32], delta_gate=True).eval()
    with torch.no_grad():
        for param in net.parameters():
            param.add_(0.05 * torch.randn_like(param))
    rate = np.linspace(0.1, 0.8, 256).reshape(16, 16)
    for light in (1.0, 0.3):  # two exposure levels: two display scales
        spikes = _still_stream(light * rate, 32)
        with torch.no_grad():
            net.correction_strength, net.correction_threshold = 0.0, 0.0
            mix = net(spikes).numpy()
            net.correction_strength = 0.7
            full = net(spikes).numpy()
            tau = float(np.percentile(np.abs(full - mix), 60) * 255)  # drops most corrections, not all
            net.correction_threshold = tau
            dead = net(spikes).numpy()
        expected = no_harm.corrected(mix, mix + (full - mix) / 0.7, 0.7, tau)
        assert np.abs(dead - expected).max() < 1e-5
        assert 0 < np.mean(dead == mix) < 1  # some pixels keep the mix exactly, others are corrected
    with pytest.raises(ValueError, match='correction_threshold'):
        DeSpikeNet(**TINY, correction_threshold=2.0)  # no base windows: nothing to threshold

    from despike_basicsr.inference.network import ReconstructorError
    from despike_basicsr.inference.reconstructor import DeSpikeReconstructor
    weights = tmp_path / 'gated.pth'
    stored = dict(type='DeSpikeNet', **TINY, base_windows=[8, 32], delta_gate=True, correction_threshold=3.0)
    torch.save({'params': net.state_dict(), 'network_g': stored}, weights)
    assert DeSpikeReconstructor(str(weights), device='cpu').net.correction_threshold == 3.0  # the weights' own
    assert DeSpikeReconstructor(str(weights), device='cpu', correction_threshold=0).net.correction_threshold == 0.0
    for bad in (-1.0, 300.0, float('nan')):
        with pytest.raises(ReconstructorError, match='correction threshold must be in'):
            DeSpikeReconstructor(str(weights), device='cpu', correction_threshold=bad)
    direct = tmp_path / 'direct.pth'
    torch.save({'params': DeSpikeNet(**TINY).state_dict(), 'network_g': dict(type='DeSpikeNet', **TINY)}, direct)
    with pytest.raises(ReconstructorError, match='no correction to threshold'):
        DeSpikeReconstructor(str(direct), device='cpu', correction_threshold=1.0)


def test_correction_strength_sweep_runs_the_network_twice_per_stream_and_scores_every_strength():
    rng = np.random.default_rng(0)
    sharp = rng.uniform(0.1, 0.9, (24, 24)).astype(np.float32)
    blurred = cv2.GaussianBlur(sharp, (0, 0), 1.5)
    scenes = [heldout.HeldoutScene('toy', 'a', sharp, blurred)] + no_harm.in_focus_scenes(
        [heldout.HeldoutScene('toy', 'a', sharp, blurred)])
    calls = []

    noisy = heldout.to_display(sharp) + 0.01 * rng.standard_normal(sharp.shape).astype(np.float32)

    def pair(spikes, gamma):  # α = 0: the blurred image; α = 1: the truth with a little noise (a good correction)
        calls.append(1)
        return 0.8 * heldout.to_display(blurred), 0.8 * noisy

    sweep = no_harm.correction_strength_sweep(scenes, pair, [0.0, 0.5, 1.0], reference_rate=0.3, steps=64,
                                              thresholds=[0.0, 300.0])
    assert len(calls) == len(scenes) * len(heldout.LIGHT_LEVELS)  # cached across the five settings
    assert sweep['settings'] == [[0.0, 0.0], [0.5, 0.0], [1.0, 0.0], [0.5, 300.0], [1.0, 300.0]]  # α = 0 once
    for condition in ('defocused', 'in focus'):
        diffs = [np.mean([r['diff'] for r in sweep['harm'][f'{a:g}/0'] if r['condition'] == condition])
                 for a in (0, .5, 1)]
        assert diffs[0] < diffs[1] < diffs[2]  # the closer to the truth, the better against the same bar
        # a dead zone wider than any correction leaves the mix (α = 0) whatever α is
        assert [r['diff'] for r in sweep['harm']['1/300']] == [r['diff'] for r in sweep['harm']['0/0']]
    table = no_harm.sweep_markdown(sweep)
    assert table.count('\n') == 2 + 5 and '| 0.5 | 0 |' in table and '| 1 | 300 |' in table
