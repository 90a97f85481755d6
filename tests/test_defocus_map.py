"""Tests of the per-pixel defocus map: DefocusMapNet, true-σ scenes, Spearman/MAE scores, the API and the CLI."""
import os.path as osp

import cv2
import numpy as np
import pytest
import torch
from scipy import stats

from despike_basicsr.evaluation import heldout as evaluation
from despike_basicsr.archs.defocus_map_arch import DefocusMapNet
from despike_basicsr.data import defocus_map_data as dmd
from despike_basicsr.inference.defocus_map import DEFOCUS_WEIGHTS, DefocusMapEstimator, colour_map_image
from despike_basicsr.inference.infer import main as infer_main
from despike_basicsr.inference.reconstructor import DeSpikeReconstructor
from despike_basicsr.spike import lens_psf, optics, simulate, write_dat

TINY_DEFOCUS = {'type': 'DefocusMapNet', 'num_feat': 4, 'windows': [8, 16], 'scales': [1.0, 2.0]}
TINY_DESPIKE = dict(type='DeSpikeNet', num_feat=4, windows=[16, 32], num_kernels=2, kernel_size=3, num_scales=2,
                    num_blocks=1, num_heads=1)


def _save(path, network_g, seed=0):
    from basicsr.archs import build_network
    torch.manual_seed(seed)
    net = build_network(dict(network_g))
    torch.save({'params': net.state_dict(), 'network_g': dict(network_g)}, path)
    return str(path)


@pytest.fixture(scope='module')
def weights(tmp_path_factory):
    """(tiny DeSpikeNet weights, tiny DefocusMapNet weights), both storing their network_g."""
    import despike_basicsr
    despike_basicsr.register()
    root = tmp_path_factory.mktemp('defocus')
    return _save(root / 'despike.pth', TINY_DESPIKE), _save(root / 'defocus.pth', TINY_DEFOCUS, seed=1)


def _half_blurred_scene(height=64, width=128, sigma=3.0, seed=0):
    """Random rectangles; the right half blurred by a Gaussian of ``sigma`` (left half sharp)."""
    rng = np.random.default_rng(seed)
    img = np.full((height, width), 0.4, np.float32)
    for _ in range(60):
        y, x = rng.integers(0, height), rng.integers(0, width)
        img[y:y + rng.integers(3, 12), x:x + rng.integers(3, 12)] = rng.uniform(0.05, 0.95)
    blurred = optics.gaussian_blur(img, sigma).astype(np.float32)
    out = img.copy()
    out[:, width // 2:] = blurred[:, width // 2:]
    return img, out


# ------------------------------------------------------------------------------------------------------------ arch
@pytest.mark.parametrize('steps,height,width', [(1, 9, 13), (20, 17, 23), (300, 32, 31)])
def test_arch_any_stream_length_and_odd_sizes(steps, height, width):
    net = DefocusMapNet(num_feat=4, windows=(8, 16), scales=(1.0, 2.0)).eval()
    spikes = (torch.rand(2, steps, height, width) < 0.3).to(torch.uint8)
    with torch.no_grad():
        sigma = net(spikes, torch.ones(1, 1, height, width))
    assert sigma.shape == (2, 1, height, width)
    assert torch.isfinite(sigma).all() and (sigma >= 0).all()


def test_arch_is_blind_to_the_light_level_and_takes_a_whole_frame_exposure():
    torch.manual_seed(0)
    net = DefocusMapNet(num_feat=4, windows=(8, 16)).eval()
    rates = torch.rand(1, 2, 24, 24) * 0.2 + 0.05
    with torch.no_grad():
        assert torch.allclose(net.predict(rates), net.predict(4.0 * rates), atol=1e-5)
        other = net.predict(rates, exposure=torch.tensor([0.05]))
    assert not torch.allclose(other, net.predict(rates), atol=1e-3)  # the level is really used


def test_log_gradient_features_fall_faster_across_scales_for_sharper_edges():
    net = DefocusMapNet(windows=(16, ), scales=(1.0, 4.0))
    step = np.zeros((1, 1, 64, 64), np.float32)
    step[..., 32:] = 1.0
    ratios = []
    for sigma in (0.0, 1.0, 2.0, 3.0):
        image = torch.from_numpy(optics.gaussian_blur(step[0, 0], sigma)[None, None].astype(np.float32))
        feats = net.features(image)[0, 1:, 32, 31:33].mean(-1)  # log |∇| at s = 1 and 4 on the edge
        ratios.append(float(feats[0] - feats[1]))
    assert all(a > b for a, b in zip(ratios, ratios[1:])), ratios


# ------------------------------------------------------------------------------------------------------ true sigma
def test_true_sigma_is_the_psf_second_moment():
    coc = np.array([[-9.0, 0.0, 5.0, 13.0]])
    gaussian = dmd.sigma_for_coc(coc, optics.gaussian_psf_for_coc, samples=201)
    np.testing.assert_allclose(gaussian, optics.coc_to_sigma(np.abs(coc)), rtol=0.03, atol=0.02)
    disc = dmd.sigma_for_coc(coc, lens_psf.LensPSF().kernel, samples=201)
    np.testing.assert_allclose(disc[0, [0, 3]], np.abs(coc[0, [0, 3]]) / 4.0, rtol=0.05)


def test_texture_mask_selects_the_neighbourhood_of_edges_only():
    flat = np.full((40, 40), 0.5, np.float32)
    flat[:, 20:] = 0.9
    mask = dmd.texture_mask(flat)
    assert mask[:, 18:22].all() and not mask[:, :8].any() and not mask[:, 32:].any()
    assert not dmd.texture_mask(np.full((40, 40), 0.5, np.float32)).any()


def test_defocus_scene_sigma_spans_the_requested_range():
    sharp = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    blurred, sigma = dmd.defocus_scene(sharp, np.random.default_rng(1), 0.0, 15.0, False)
    assert blurred.shape == sigma.shape == (64, 64)
    assert sigma.min() < 0.1 and 3.3 < sigma.max() < 3.6


# ---------------------------------------------------------------------------------------------------------- scores
def test_spearman_and_mae_on_a_constructed_case():
    truth = np.array([[0.0, 1.0, 2.0], [3.0, 4.0, 9.0]])
    mask = np.array([[True, True, True], [True, True, False]])
    monotone = truth**2 / 4.0  # same order, known errors: 0, 0.75, 1, 0.75, 0 on the masked pixels
    monotone[1, 2] = -100.0  # outside the mask: must not count
    scores = evaluation.defocus_map_scores(monotone, truth, mask)
    assert scores['spearman'] == pytest.approx(1.0)
    assert scores['mae'] == pytest.approx((0 + 0.75 + 1 + 0.75 + 0) / 5)
    assert scores['textured'] == pytest.approx(5 / 6)
    assert evaluation.defocus_map_scores(-truth, truth, mask)['spearman'] == pytest.approx(-1.0)
    rng = np.random.default_rng(3)
    a, b = rng.integers(0, 5, 200).astype(float), rng.random(200)  # with ties
    assert evaluation.spearman(a, b) == pytest.approx(stats.spearmanr(a, b)[0])
    assert np.isnan(evaluation.spearman(np.ones(5), np.arange(5)))
    with pytest.raises(ValueError):
        evaluation.defocus_map_scores(truth, truth, np.zeros_like(mask))


def test_evaluate_defocus_map_scores_an_oracle_perfectly():
    image = np.random.default_rng(0).random((48, 48, 3)).astype(np.float32)
    scenes = evaluation.defocus_map_scenes({'noise': image})
    truth = scenes[0].sigma
    report = evaluation.evaluate_defocus_map(scenes, lambda spikes, gamma: truth, steps=16, levels={'bright': 0.3})
    row = report['rows'][0]
    assert row['spearman'] == pytest.approx(1.0) and row['mae'] == pytest.approx(0.0)
    assert 3.4 < row['sigma_max'] < 3.6
    constant = evaluation.evaluate_defocus_map(scenes, lambda spikes, gamma: np.ones_like(truth), steps=16,
                                               levels={'bright': 0.3})['rows'][0]
    mask = dmd.texture_mask(evaluation.to_display(scenes[0].sharp))
    assert constant['mae'] == pytest.approx(float(np.abs(1.0 - truth[mask]).mean()), rel=1e-5)
    assert '| **mean** |' in evaluation.defocus_map_markdown(report)


# ---------------------------------------------------------------------------------------------------- API and CLI
def test_api_returns_a_map_of_the_frame_size_and_leaves_the_image_alone(weights):
    despike_weights, defocus_weights = weights
    spikes = simulate(_half_blurred_scene(21, 35)[1], 40, seed=0)
    reconstructor = DeSpikeReconstructor(despike_weights, device='cpu')
    before = reconstructor.reconstruct(spikes)
    sigma = reconstructor.defocus_map(spikes, weights=defocus_weights)
    assert sigma.shape == (21, 35) and sigma.dtype == np.float32
    np.testing.assert_array_equal(reconstructor.reconstruct(spikes), before)
    np.testing.assert_allclose(sigma, DefocusMapEstimator(defocus_weights, 'cpu').estimate(spikes), atol=1e-6)


def test_cli_defocus_map_writes_npy_and_colour_png_without_changing_the_image(weights, tmp_path):
    despike_weights, defocus_weights = weights
    write_dat(tmp_path / 'rec.dat', simulate(_half_blurred_scene(30, 44)[1], 80, seed=1))
    common = ['--weights', despike_weights, '--input', str(tmp_path / 'rec.dat'), '--height', '30', '--width', '44',
              '--centers', '30,50', '--quiet']
    assert infer_main(common + ['--out', str(tmp_path / 'plain')]) == 0
    assert infer_main(common + ['--out', str(tmp_path / 'out'), '--defocus-map', defocus_weights]) == 0
    for centre in (30, 50):
        stem = tmp_path / 'out' / 'defocus' / f'rec_t{centre:06d}'
        sigma = np.load(f'{stem}.npy')
        assert sigma.shape == (30, 44) and sigma.dtype == np.float32 and (sigma >= 0).all()
        picture = cv2.imread(f'{stem}.png', cv2.IMREAD_UNCHANGED)
        assert picture.ndim == 3 and picture.shape[1] > 44  # colour, with a colour bar beside the map
        name = f'rec_t{centre:06d}.png'
        np.testing.assert_array_equal(cv2.imread(str(tmp_path / 'out' / 'despike' / name), cv2.IMREAD_UNCHANGED),
                                      cv2.imread(str(tmp_path / 'plain' / 'despike' / name), cv2.IMREAD_UNCHANGED))
    assert not osp.exists(tmp_path / 'plain' / 'defocus')
    assert infer_main(common + ['--out', str(tmp_path / 'out'), '--defocus-map', defocus_weights]) == 2  # exists
    assert infer_main(common + ['--out', str(tmp_path / 'x'), '--defocus-map', str(tmp_path / 'none.pth')]) == 2


def test_colour_map_image_has_a_bar_and_maps_low_to_dark():
    sigma = np.tile(np.linspace(0, 4, 50, dtype=np.float32), (30, 1))
    picture = colour_map_image(sigma, top=4.0)
    assert picture.shape[0] == 64 and picture.shape[1] > 50 and picture.dtype == np.uint8
    assert picture[5, 0].sum() < picture[5, 49].sum()  # viridis: dark purple at 0, bright yellow at the top


# --------------------------------------------------------------------------------------------------- shipped model
@pytest.mark.skipif(not osp.isfile(DEFOCUS_WEIGHTS), reason='the defocus-map weights are not built yet')
def test_shipped_weights_see_the_blurred_half_as_more_defocused():
    sharp, scene = _half_blurred_scene(64, 128, sigma=3.0, seed=4)
    spikes = simulate(scene, 256, threshold=2.0, eta=1.0, seed=4, gain=np.random.default_rng(4).normal(
        1.0, 0.05, scene.shape).clip(0.5, 1.5).astype(np.float32) * 0.5)
    sigma = DefocusMapEstimator(device='cpu').estimate(spikes)
    mask = dmd.texture_mask(evaluation.to_display(sharp))
    left, right = sigma[:, 8:56][mask[:, 8:56]].mean(), sigma[:, 72:120][mask[:, 72:120]].mean()
    assert right > left + 1.0, (left, right)
    assert 1.5 < right < 4.5  # the blurred half's σ is 3 px


def test_evaluate_heldout_defocus_only_writes_its_own_section(weights, tmp_path, monkeypatch, repo_root):
    import importlib.util
    path = osp.join(repo_root, 'scripts', 'evaluate_heldout.py')
    spec = importlib.util.spec_from_file_location('evaluate_heldout', path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    image = np.random.default_rng(0).random((40, 56)).astype(np.float32)
    monkeypatch.setattr(evaluation, 'skimage_images', lambda: {'noise': image})
    out = tmp_path / 'heldout'
    assert script.main(['--defocus-only', '--defocus-weights', weights[1], '--device', 'cpu', '--out', str(out)]) == 0
    text = (out / 'defocus_map.md').read_text(encoding='utf-8')
    assert 'photos+depth/gaussian' in text and 'photos+depth/lens' in text and '| **mean** |' in text
    assert (out / 'defocus_map.png').is_file() and not (out / 'heldout.md').exists()
