"""DeSpikeReconstructor (the Python API), checkpoints that carry their network options, the shipped weights, and the
held-out evaluation core, on small data the tests make."""
import os.path as osp
import warnings

import numpy as np
import pytest
import torch
import yaml

from despike_basicsr.evaluation import heldout as evaluation
from despike_basicsr.archs.despike_arch import DeSpikeNet
from despike_basicsr.data.scenes import generate_scene
from despike_basicsr.inference.display import expose
from despike_basicsr.inference.network import PRETRAINED_WEIGHTS, ReconstructorError, load_network
from despike_basicsr.inference.reconstructor import DeSpikeReconstructor
from despike_basicsr.spike import camera
from despike_basicsr.spike.reconstruct import tfp

TINY = dict(type='DeSpikeNet', num_feat=8, windows=[16, 32], num_kernels=3, kernel_size=5, num_scales=2,
            num_blocks=1, num_heads=2)


@pytest.fixture(scope='module')
def tiny_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    net = DeSpikeNet(**{k: v for k, v in TINY.items() if k != 'type'})
    root = tmp_path_factory.mktemp('ckpt')
    torch.save({'params': net.state_dict(), 'network_g': dict(TINY)}, root / 'with_opt.pth')
    torch.save({'params': net.state_dict()}, root / 'bare.pth')
    return root, net.eval()


def test_reconstructs_like_the_network_from_a_checkpoint_that_names_its_network(tiny_checkpoint):
    root, net = tiny_checkpoint
    spikes = camera.simulate(generate_scene(24, 20, 1)[0], 40, seed=0)
    reconstructor = DeSpikeReconstructor(str(root / 'with_opt.pth'), device='cpu')
    image = reconstructor.reconstruct(spikes, exposure='fixed')
    assert image.shape == (24, 20) and image.dtype == np.float32
    with torch.no_grad():
        raw = net(torch.from_numpy(spikes[4:36])[None])[0, 0].numpy()  # 32 frames around 20
    np.testing.assert_allclose(image, np.clip(raw, 0, 1), rtol=1e-5, atol=1e-6)
    # the default display is the auto exposure of the same output
    np.testing.assert_allclose(reconstructor.reconstruct(spikes), expose(raw, 'auto')[0], rtol=1e-5, atol=1e-6)


def test_tiles_share_the_whole_frames_exposure(tiny_checkpoint):
    root, _ = tiny_checkpoint
    scene = generate_scene(64, 64, 2)[0]
    scene[:, :32] *= 0.2  # a dark half: per-tile exposure levels would differ from the frame's
    spikes = camera.simulate(scene, 32, seed=1)
    whole = DeSpikeReconstructor(str(root / 'with_opt.pth'), device='cpu').reconstruct(spikes, exposure='fixed')
    tiled = DeSpikeReconstructor(str(root / 'with_opt.pth'), device='cpu', tile=32,
                                 tile_overlap=8).reconstruct(spikes, exposure='fixed')
    assert abs(float(tiled[:, :16].mean()) - float(whole[:, :16].mean())) < 0.02
    assert abs(float(tiled.mean()) - float(whole.mean())) < 0.01


def test_checkpoints_without_network_options_need_them(tiny_checkpoint, tmp_path):
    root, _ = tiny_checkpoint
    with pytest.raises(ReconstructorError, match='does not say which network'):
        load_network(str(root / 'bare.pth'))
    net, network_opt, source = load_network(str(root / 'bare.pth'), network_opt=dict(TINY))
    assert network_opt == TINY and source == 'network_opt'
    (tmp_path / 'opt.yml').write_text('network_g:\n  type: DeSpikeNet\n  num_feat: 16\n')
    with pytest.raises(ReconstructorError, match='shape mismatches'):
        load_network(str(root / 'with_opt.pth'), opt_path=str(tmp_path / 'opt.yml'))
    (tmp_path / 'broken.pth').write_bytes(b'not a checkpoint')
    with pytest.raises(ReconstructorError, match='broken.pth'):
        DeSpikeReconstructor(str(tmp_path / 'broken.pth'))


def test_network_options_resolution_order(tiny_checkpoint, tmp_path):
    """Caller's options, else the checkpoint's network_g, else the experiment folder's options file, else the
    fallback file, else an error."""
    root, net = tiny_checkpoint
    experiment = tmp_path / 'DeSpike_x'
    (experiment / 'models').mkdir(parents=True)
    weights = experiment / 'models' / 'net_g_5.pth'
    torch.save({'params': net.state_dict()}, weights)  # an older checkpoint: no network_g stored
    (experiment / 'notes.yml').write_text('just: notes\n')  # no network_g: ignored
    with pytest.raises(ReconstructorError, match='does not say which network'):
        load_network(str(weights))
    (experiment / 'train_x.yml').write_text(yaml.safe_dump({'name': 'DeSpike_x', 'network_g': dict(TINY)}))
    _, network_opt, source = load_network(str(weights))
    assert network_opt == TINY and source == str(experiment / 'train_x.yml')
    (experiment / 'train_y.yml').write_text(yaml.safe_dump({'network_g': dict(TINY, num_feat=16)}))
    with pytest.raises(ReconstructorError, match='different network_g'):
        load_network(str(weights))
    # a stored network_g comes before the experiment folder; the caller's options before both
    torch.save({'params': net.state_dict(), 'network_g': dict(TINY)}, weights)
    assert load_network(str(weights))[2] == f'network_g stored in {weights}'
    with pytest.raises(ReconstructorError, match='shape mismatches'):
        load_network(str(weights), opt_path=str(experiment / 'train_y.yml'))

    # outside an experiment folder: the fallback file when given
    (tmp_path / 'fallback.yml').write_text(yaml.safe_dump({'network_g': dict(TINY)}))
    _, _, source = load_network(str(root / 'bare.pth'), fallback_opt_path=str(tmp_path / 'fallback.yml'))
    assert source == str(tmp_path / 'fallback.yml')
    with pytest.raises(ReconstructorError, match='missing.yml: default options file missing'):
        load_network(str(root / 'bare.pth'), fallback_opt_path=str(tmp_path / 'missing.yml'))


def test_short_streams_and_bad_shapes_are_refused(tiny_checkpoint):
    root, _ = tiny_checkpoint
    reconstructor = DeSpikeReconstructor(str(root / 'with_opt.pth'), device='cpu')
    # windows 16/32 are clipped to the stream, down to 8 steps (DeSpikeNet.min_stream_len)
    assert reconstructor.min_stream_len == 8
    assert reconstructor.reconstruct(np.zeros((10, 8, 8), np.uint8)).shape == (8, 8)
    with pytest.raises(ReconstructorError, match='leaves 6 frames.*at least 8'):
        reconstructor.reconstruct(np.zeros((6, 8, 8), np.uint8))
    with pytest.raises(ReconstructorError, match='leaves 6 frames.*at least 8'):
        reconstructor.reconstruct(np.zeros((40, 8, 8), np.uint8), centre=3)
    with pytest.raises(ReconstructorError, match=r'\(T, H, W\)'):
        reconstructor.reconstruct(np.zeros((40, 8), np.uint8))
    with pytest.raises(ReconstructorError, match='gamma'):
        reconstructor.reconstruct(np.zeros((40, 8, 8), np.uint8), gamma=np.ones((4, 4)))


@pytest.mark.skipif(not osp.isfile(PRETRAINED_WEIGHTS), reason='the pretrained weights are not built yet')
def test_shipped_weights_load_without_options_and_reconstruct_exposure_invariantly():
    """The README example: the shipped model, a scene at two light levels 4× apart."""
    reconstructor = DeSpikeReconstructor(device='cpu')
    assert reconstructor.network_source.startswith('network_g stored in')
    scene = generate_scene(64, 64, 3)[0]
    streams = [camera.simulate(scene * light, 192, seed=2) for light in (1.2, 0.3)]
    images = [reconstructor.reconstruct(stream, exposure='fixed') for stream in streams]
    ratio = float(images[0].mean() / images[1].mean())
    assert abs(ratio - 4**(1 / 2.2)) < 0.15 * 4**(1 / 2.2)
    # each level at least as close to the scene as the plain 192-step average (fitted PSNR): the same image, up to
    # the noise of 4x fewer spikes, and no harm done at either level
    truth = scene**(1 / 2.2)
    for image, stream in zip(images, streams):
        plain = np.maximum(tfp(stream, window=192), 0.0)**(1 / 2.2)
        despike_psnr = 10 * np.log10(1 / np.mean((evaluation.gain_offset_fit(image, truth) - truth)**2))
        plain_psnr = 10 * np.log10(1 / np.mean((evaluation.gain_offset_fit(plain, truth) - truth)**2))
        assert despike_psnr > plain_psnr, (despike_psnr, plain_psnr)
    shown = [reconstructor.reconstruct(stream) for stream in streams]  # auto exposure: the same brightness
    assert abs(float(shown[0].mean() / shown[1].mean()) - 1.0) < 0.05


# ----------------------------------------------------------------------------------------------------------------------
# Held-out evaluation core


def test_gain_offset_fit_recovers_an_affine_copy():
    target = np.random.default_rng(0).uniform(0.1, 0.9, (16, 16)).astype(np.float32)
    np.testing.assert_allclose(evaluation.gain_offset_fit(0.5 * target + 0.1, target), target, atol=1e-5)
    raw, fitted = evaluation.scores(0.5 * target + 0.1, target), evaluation.scores(target, target)
    assert raw['psnr'] < 30 and raw['psnr_fit'] == fitted['psnr'] == float('inf')


def test_ssim_by_region_splits_where_defocus_removed_detail():
    from basicsr.metrics import calculate_ssim
    import cv2
    truth = np.clip(generate_scene(64, 96, 3)[0]**(1 / 2.2), 0, 1).astype(np.float32)
    photo = truth.copy()
    photo[:, :48] = cv2.GaussianBlur(truth, (0, 0), 4.0)[:, :48]  # left half defocused, right half sharp
    mask = evaluation.defocus_loss_mask(photo, truth)
    assert mask[8:-8, 8:40].mean() > 0.8 and mask[8:-8, 60:-8].mean() < 0.05
    u8 = (truth * 255).round().astype(np.uint8)
    noisy = np.clip(truth + np.random.default_rng(0).normal(0, 0.05, truth.shape), 0, 1)
    # the map's mean is BasicSR's SSIM
    assert evaluation.ssim_map((noisy * 255).round(), u8).mean() == pytest.approx(
        calculate_ssim((noisy * 255).round().astype(np.uint8), u8, crop_border=0), abs=1e-6)
    photo_regions, noisy_regions = (evaluation.region_ssim(x, truth, mask) for x in (photo, noisy))
    assert photo_regions['ssim_rest'] > 0.95 > photo_regions['ssim_defocus'] + 0.1  # exact where sharp
    assert noisy_regions['ssim_rest'] < photo_regions['ssim_rest'] - 0.03  # noise costs where the photo is exact
    assert np.isnan(evaluation.region_ssim(photo, truth, np.zeros_like(mask))['ssim_defocus'])


def test_flat_dark_bias_measures_tone_errors_only_where_the_target_is_flat_and_dark():
    truth = np.full((48, 64), 20 / 255, np.float32)
    truth[:, 32:] = 200 / 255  # right half bright: outside the band
    truth[:8] = np.tile(np.linspace(0, 1, 64, dtype=np.float32), (8, 1))  # a ramp: not flat
    assert evaluation.flat_dark_bias(truth, truth) == 0.0
    darker = truth - 4 / 255
    assert evaluation.flat_dark_bias(darker, truth) == pytest.approx(-4.0, abs=0.01)
    brighter_elsewhere = truth.copy()
    brighter_elsewhere[:, 32:] += 10 / 255
    assert evaluation.flat_dark_bias(brighter_elsewhere, truth) == pytest.approx(0.0, abs=0.01)
    assert np.isnan(evaluation.flat_dark_bias(truth[:, 40:], truth[:, 40:]))  # nothing flat and dark


def test_a_dark_current_the_reconstruction_ignores_lifts_the_dark_regions():
    image = np.full((40, 48, 3), 0.06, np.float32)  # 15 of 255: flat and dark ...
    image[:, 24:] = 0.9  # ... beside a bright half that sets the exposure (mean rate 0.3 per step)
    images = {'halves': image}
    scenes = evaluation.synthetic_depth_scenes(images, seed=0, sigma_range=(0.5, 1.0), set_name='toy')
    plain = lambda spikes, gamma: (spikes.mean(0) * gamma / 0.5)**(1 / 2.2)  # noqa: E731 (TFP, no dark model)
    levels = {'bright': 0.3}
    clean = evaluation.evaluate(scenes, plain, steps=192, levels=levels)
    dark = evaluation.evaluate(scenes, plain, steps=192, levels=levels,
                               camera=dict(evaluation.EVAL_CAMERA, dark_rate=0.01))
    bias = {name: {s['method']: s['dark_bias'] for s in report['summary']} for name, report in
            (('clean', clean), ('dark', dark))}
    assert bias['clean']['defocused'] == pytest.approx(0.0, abs=0.5)
    assert bias['dark']['despike'] > bias['clean']['despike'] + 5
    assert 'Mean error in flat dark regions' in evaluation.markdown(dark['summary'])


def test_evaluate_scores_every_method_at_every_level():
    images = {f'img{i}': generate_scene(40, 48, 10 + i)[0]**(1 / 2.2) for i in range(2)}
    scenes = evaluation.synthetic_depth_scenes(images, seed=0, sigma_range=(0.5, 2.0), set_name='toy')
    assert scenes[0].blurred.shape == (40, 48)
    # a stand-in "DeSpike": TFP over the whole stream, shown at the reference camera's scale
    report = evaluation.evaluate(scenes, lambda spikes, gamma: (spikes.mean(0) * gamma / 0.5)**(1 / 2.2),
                                 steps=64, levels={'bright': 0.3, 'dim': 0.075})
    assert len(report['rows']) == 2 * 2 * len(evaluation.METHODS)
    summary = {(s['level'], s['method']): s for s in report['summary']}
    assert summary[('bright', 'defocused')]['psnr'] > 20  # noise-free defocus of mild blur
    assert summary[('bright', 'tfp192')]['psnr'] > summary[('dim', 'tfp192')]['psnr']  # fewer spikes, more noise
    # the stand-in equals TFP over all 64 frames, raw scale from the known exposure
    assert summary[('bright', 'despike')]['psnr'] == pytest.approx(summary[('bright', 'tfp192')]['psnr'], abs=0.3)
    assert 0.0 <= summary[('bright', 'despike')]['ssim_rest'] <= 1.0
    table = evaluation.markdown(report['summary'])
    assert '### toy (2 scenes)' in table and 'TFP-192' in table and 'defocused region / elsewhere' in table
    picture = evaluation.picture(report['_images'], crop=32)
    assert picture.ndim == 2 and picture.shape[1] > 6 * 32


def test_summary_keeps_nan_and_inf_apart_without_warning():
    rows = [dict(set='s in focus', level='bright', method=m, psnr=p, ssim_defocus=float('nan'))
            for m, p in (('defocused', float('inf')), ('defocused', float('inf')), ('tfp192', 30.0))]
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # no "Mean of empty slice" for a set without defocused regions
        summary = {s['method']: s for s in evaluation.summarise(rows)}
    assert summary['defocused']['psnr'] == float('inf') and summary['tfp192']['psnr'] == 30.0
    assert np.isnan(summary['tfp192']['ssim_defocus'])


def test_skimage_scenes_are_shipped_photographs():
    pytest.importorskip('skimage')
    images = evaluation.skimage_images(('camera', 'coffee'))
    assert images['camera'].ndim == 2 and images['coffee'].ndim == 3
    assert 0 <= images['coffee'].min() and images['coffee'].max() <= 1


@pytest.mark.skipif(not osp.isfile(PRETRAINED_WEIGHTS), reason='the pretrained weights are not built yet')
def test_the_readme_api_example_runs(tmp_path, monkeypatch):
    from despike_basicsr.spike.io import write_dat

    readme = open(osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), 'README.md'), encoding='utf-8').read()
    start = readme.index('```python\nfrom despike_basicsr.inference import DeSpikeReconstructor')
    code = readme[start + len('```python\n'):readme.index('```', start + 10)]
    write_dat(tmp_path / 'rec.dat', camera.simulate(generate_scene(250, 400, 4)[0], 200, seed=3))
    monkeypatch.chdir(tmp_path)
    scope = {}
    exec(compile(code, 'README.md', 'exec'), scope)  # noqa: S102  (the README's own example)
    assert scope['image'].shape == (250, 400) and 0.05 < float(scope['image'].mean()) < 0.95
