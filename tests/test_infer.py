"""Tests of ``despike-infer`` (despike_basicsr.inference.infer): layouts, tiling, video, report, FPN and clear errors.

Most runs use a tiny DeSpikeNet from an options file the tests write; the report/video/error tests also use a cheap
registered stand-in network (a temporal mean times γ through a 1×1 convolution) so they stay fast on two CPU cores.
"""
import json
import os
import os.path as osp
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
import yaml
from torch import nn

from despike_basicsr.inference import infer
from despike_basicsr.archs.despike_arch import DeSpikeNet
from despike_basicsr.inference.infer import main
from despike_basicsr.metrics.noref_metric import calculate_niqe_gray, calculate_rms_contrast
from despike_basicsr.inference.recording_report import to_uint8
from despike_basicsr.spike import rate_to_display, read_dat, simulate, tfp, write_dat, write_npz
from despike_basicsr.inference.tiling import count_tiles

TINY_NET = dict(
    type='DeSpikeNet',
    num_feat=4,
    windows=[16, 32],
    num_kernels=2,
    kernel_size=3,
    num_scales=2,
    num_blocks=1,
    num_heads=1)


class InferStandInNet(nn.Module):
    """Cheap stand-in: mean rate over the centre 16 frames, times γ, through a 1×1 convolution (weight 2, bias 0)."""

    min_stream_len = 8
    frames_needed = 16

    def __init__(self, scale: float = 2.0) -> None:
        super().__init__()
        self.mix = nn.Conv2d(1, 1, 1)
        nn.init.constant_(self.mix.weight, scale)
        nn.init.zeros_(self.mix.bias)

    def forward(self, spikes, gamma=None):
        centre = spikes.shape[1] // 2
        rate = spikes[:, max(centre - 8, 0):centre + 8].float().mean(1, keepdim=True)
        if gamma is not None:
            rate = rate * gamma
        return self.mix(rate)


def _register_stand_in():
    from basicsr.utils.registry import ARCH_REGISTRY
    if 'InferStandInNet' not in ARCH_REGISTRY:
        ARCH_REGISTRY.register(InferStandInNet)


_register_stand_in()


def _scene(height, width, seed=0):
    """Linear intensities in [0.05, 0.95]: overlapping rectangles (edges for NIQE and contrast to see)."""
    rng = np.random.default_rng(seed)
    img = np.full((height, width), 0.4, np.float32)
    for _ in range(max(8, height * width // 2000)):
        y, x = rng.integers(0, height), rng.integers(0, width)
        h, w = rng.integers(3, max(4, height // 3)), rng.integers(3, max(4, width // 3))
        img[y:y + h, x:x + w] = rng.uniform(0.05, 0.95)
    return img


def _stream(height, width, steps, seed=0):
    return simulate(_scene(height, width, seed), steps, threshold=2.0, eta=1.0, seed=seed)


def _write_opt(path, network_g):
    with open(path, 'w', encoding='utf-8') as f:
        yaml.safe_dump({'name': 'infer_test', 'network_g': network_g}, f)
    return str(path)


def _save_weights(path, network_g, seed=0, key='params'):
    from basicsr.archs import build_network
    torch.manual_seed(seed)
    net = build_network(dict(network_g))
    torch.save({key: net.state_dict()} if key else net.state_dict(), path)
    return net.eval()


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    """(options path, weights path, network) of a tiny DeSpikeNet."""
    root = tmp_path_factory.mktemp('tiny')
    opt = _write_opt(root / 'tiny.yml', TINY_NET)
    net = _save_weights(root / 'tiny.pth', TINY_NET)
    return opt, str(root / 'tiny.pth'), net


@pytest.fixture(scope='module')
def stand_in(tmp_path_factory):
    root = tmp_path_factory.mktemp('standin')
    network_g = {'type': 'InferStandInNet'}
    opt = _write_opt(root / 'standin.yml', network_g)
    _save_weights(root / 'standin.pth', network_g)
    return opt, str(root / 'standin.pth')


def _png(path):
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert img is not None, path
    return img


def _run_error(capsys, argv):
    """main(argv) must fail with status 2 and one stderr line; returns that line."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    lines = [line for line in err if line.startswith('despike-infer: error:')]
    assert len(lines) == 1, err
    return lines[0]


def test_dat_npz_head_and_flip_layouts_agree_with_direct_network_call(tiny, tmp_path):
    opt, weights, net = tiny
    height, width, steps = 40, 64, 48
    spikes = _stream(height, width, steps)
    write_dat(tmp_path / 'rec.dat', spikes)
    write_dat(tmp_path / 'head.dat', spikes, head=True)
    write_dat(tmp_path / 'upright.dat', spikes, flipud=False)
    write_npz(tmp_path / 'spk.npz', spikes, layout='spk')
    write_npz(tmp_path / 'hwt.npz', spikes, layout='arr_0')
    size = ['--height', str(height), '--width', str(width)]
    runs = {
        'rec': size,
        'head': size + ['--head'],
        'upright': size + ['--no-flipud'],
        'spk': [],
        'hwt': [],
    }
    base = ['--weights', weights, '--opt', opt, '--quiet', '--exposure', 'fixed']  # exact values: the reference scale
    for stem, extra in runs.items():
        ext = '.dat' if stem in ('rec', 'head', 'upright') else '.npz'
        assert main(base + ['--input', str(tmp_path / f'{stem}{ext}'), '--out', str(tmp_path / stem)] + extra) == 0

    centre = steps // 2  # default centre; the default window is the net's longest (32 frames)
    with torch.inference_mode():
        direct = net(torch.from_numpy(spikes[centre - 16:centre + 16])[None].float())[0, 0].numpy()
    expected = to_uint8(direct)
    for stem in runs:
        got = _png(tmp_path / stem / 'despike' / f'{stem}_t{centre:06d}.png')
        assert got.shape == (height, width)
        np.testing.assert_array_equal(got, expected, err_msg=stem)
    # reading the headed file without --head is a size error, not silent garbage
    assert read_dat(tmp_path / 'head.dat', height, width, head=True).shape == spikes.shape


def test_report_on_default_size_dat_with_side_by_side(stand_in, tmp_path):
    opt, weights = stand_in
    spikes = _stream(250, 400, 60, seed=1)
    write_dat(tmp_path / 'real.dat', spikes)
    out = tmp_path / 'out'
    assert main([
        '--weights', weights, '--opt', opt, '--input',
        str(tmp_path / 'real.dat'), '--centers', '20,35', '--report', '--quiet', '--exposure', 'fixed', '--out',
        str(out)
    ]) == 0
    report = json.loads((out / 'report.json').read_text())
    assert report['height'] == 250 and report['width'] == 400 and report['frames'] == 60
    assert [r['centre'] for r in report['per_centre']] == [20, 35]
    for row in report['per_centre']:
        for method in ('tfp', 'tfi', 'despike'):
            assert np.isfinite(row[method]['niqe']) and row[method]['niqe'] > 0
            assert 0 < row[method]['rms_contrast'] < 0.5
    for method in ('tfp', 'tfi', 'despike'):
        mean_niqe = np.mean([r[method]['niqe'] for r in report['per_centre']])
        assert report['summary'][method]['niqe'] == pytest.approx(mean_niqe)
    # the numbers are those of the written PNGs
    for method in ('tfp', 'tfi', 'despike'):
        img = _png(out / method / 'real_t000035.png')
        assert report['per_centre'][1][method]['niqe'] == pytest.approx(calculate_niqe_gray(img))
        assert report['per_centre'][1][method]['rms_contrast'] == pytest.approx(calculate_rms_contrast(img))
    assert report['per_centre'][1]['tfi']['niqe'] != report['per_centre'][1]['tfp']['niqe']

    table = (out / 'report.md').read_text()
    for label in ('| TFP |', '| TFI |', '| DeSpike |'):
        line = next(line for line in table.splitlines() if line.startswith(label))
        assert 'n/a' not in line
        method = label.strip('| ').lower()
        assert float(line.split('|')[2]) == pytest.approx(report['summary'][method]['niqe'], abs=1e-3)
        assert float(line.split('|')[3]) == pytest.approx(report['summary'][method]['rms_contrast'], abs=1e-4)

    # written TFP equals the classical reconstruction of the same window, through rate_to_display
    start, stop = report['per_centre'][0]['window']
    expected_tfp = to_uint8(rate_to_display(tfp(spikes[start:stop], center=20 - start, window=41)))
    np.testing.assert_array_equal(_png(out / 'tfp' / 'real_t000020.png'), expected_tfp)
    # stand-in output = 2 × mean rate over the centre 16 frames
    expected_despike = to_uint8(2 * spikes[12:28].mean(0))
    np.testing.assert_array_equal(_png(out / 'despike' / 'real_t000020.png'), expected_despike)
    panel = _png(out / 'side_by_side' / 'real_t000020.png')
    assert panel.shape == (250 + 22, 3 * 400 + 2 * 4)
    np.testing.assert_array_equal(panel[22:, :400], expected_tfp)
    np.testing.assert_array_equal(panel[22:, -400:], expected_despike)


def test_video_has_one_frame_per_sliding_centre(stand_in, tmp_path):
    opt, weights = stand_in
    height, width, steps = 61, 83, 100  # odd sizes: the video pads to even
    write_npz(tmp_path / 'clip.npz', _stream(height, width, steps, seed=2))
    out = tmp_path / 'out'
    assert main([
        '--weights', weights, '--opt', opt, '--input',
        str(tmp_path / 'clip.npz'), '--sliding', '10', '--video', '--quiet', '--out',
        str(out)
    ]) == 0
    centres = list(range(8, steps - 8 + 1, 10))  # full 16-frame windows only
    pngs = sorted(os.listdir(out / 'despike'))
    assert pngs == [f'clip_t{c:06d}.png' for c in centres]
    capture = cv2.VideoCapture(str(out / 'clip_despike.mp4'))
    assert capture.isOpened()
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    assert len(frames) == len(centres)
    assert frames[0].shape[:2] == (height + 1, width + 1)
    # lossy codec, but the video frame resembles its PNG
    first = _png(out / 'despike' / pngs[0]).astype(float)
    assert np.abs(frames[0][:height, :width, 0].astype(float) - first).mean() < 12


def test_tiled_output_equals_whole_frame_for_a_pointwise_network(stand_in, tmp_path):
    opt, weights = stand_in
    write_npz(tmp_path / 'big.npz', _stream(300, 260, 24, seed=3))
    base = ['--weights', weights, '--opt', opt, '--input', str(tmp_path / 'big.npz'), '--quiet', '--exposure', 'fixed']
    assert main(base + ['--tile', '0', '--out', str(tmp_path / 'whole')]) == 0
    assert main(base + ['--tile', '96', '--tile-overlap', '16', '--out', str(tmp_path / 'tiled')]) == 0
    name = 'despike/big_t000012.png'
    np.testing.assert_array_equal(_png(tmp_path / 'tiled' / name), _png(tmp_path / 'whole' / name))


@pytest.mark.slow
def test_1000x1000_stream_runs_tiled_with_bounded_tiles(tmp_path, monkeypatch):
    network_g = dict(TINY_NET, num_feat=2, windows=[8, 16])
    opt = _write_opt(tmp_path / 'mini.yml', network_g)
    _save_weights(tmp_path / 'mini.pth', network_g)
    write_dat(tmp_path / 'sps.dat', _stream(1000, 1000, 24, seed=4))
    seen = []
    original = DeSpikeNet.forward

    def recording_forward(self, spikes, gamma=None, return_intermediates=False, exposure=None):
        seen.append(tuple(spikes.shape))
        return original(self, spikes, gamma, return_intermediates, exposure)

    monkeypatch.setattr(DeSpikeNet, 'forward', recording_forward)
    out = tmp_path / 'out'
    assert main([
        '--weights',
        str(tmp_path / 'mini.pth'), '--opt', opt, '--input',
        str(tmp_path / 'sps.dat'), '--height', '1000', '--width', '1000', '--tile', '256', '--tile-overlap', '32',
        '--quiet', '--out',
        str(out)
    ]) == 0
    assert len(seen) == count_tiles(1000, 1000, 256, 32) == 25
    assert max(s[2] for s in seen) <= 256 and max(s[3] for s in seen) <= 256
    assert all(s[1] == 16 for s in seen)  # the network's longest window, read from the file window by window
    img = _png(out / 'despike' / 'sps_t000012.png')
    assert img.shape == (1000, 1000)


def test_fpn_gamma_scales_input_and_classical_reconstructions(stand_in, tmp_path, capsys):
    opt, weights = stand_in
    spikes = _stream(48, 64, 40, seed=5)
    write_npz(tmp_path / 'cam.npz', spikes)
    gamma = np.full((48, 64), 0.5, np.float32)
    gamma[:, 32:] = 1.5
    np.savez(tmp_path / 'fpn.npz', gamma=gamma)
    base = ['--weights', weights, '--opt', opt, '--input', str(tmp_path / 'cam.npz'), '--quiet', '--report']
    base += ['--exposure', 'fixed']
    assert main(base + ['--out', str(tmp_path / 'plain')]) == 0
    assert main(base + ['--fpn', str(tmp_path / 'fpn.npz'), '--out', str(tmp_path / 'fpn')]) == 0
    rate = spikes[12:28].mean(0)
    np.testing.assert_array_equal(
        _png(tmp_path / 'fpn' / 'despike' / 'cam_t000020.png'), to_uint8(2 * rate * gamma))
    expected_tfp = to_uint8(rate_to_display(tfp(spikes[12:28], center=8) * gamma))
    np.testing.assert_array_equal(_png(tmp_path / 'fpn' / 'tfp' / 'cam_t000020.png'), expected_tfp)
    assert not np.array_equal(_png(tmp_path / 'plain' / 'tfp' / 'cam_t000020.png'), expected_tfp)
    # too small for NIQE: the report says n/a instead of failing
    report = json.loads((tmp_path / 'fpn' / 'report.json').read_text())
    assert report['summary']['despike']['niqe'] is None and report['summary']['despike']['rms_contrast'] > 0
    assert report['fpn'] == str(tmp_path / 'fpn.npz')

    # a bare γ map (.npy) works the same as the calibration file
    np.save(tmp_path / 'gamma.npy', gamma)
    assert main(base + ['--fpn', str(tmp_path / 'gamma.npy'), '--out', str(tmp_path / 'npy')]) == 0
    np.testing.assert_array_equal(
        _png(tmp_path / 'npy' / 'despike' / 'cam_t000020.png'), _png(tmp_path / 'fpn' / 'despike' / 'cam_t000020.png'))
    np.save(tmp_path / 'bad.npy', -gamma)
    line = _run_error(capsys, base + ['--fpn', str(tmp_path / 'bad.npy'), '--out', str(tmp_path / 'b')])
    assert 'bad.npy' in line and 'finite and positive' in line

    np.savez(tmp_path / 'wrong.npz', gamma=np.ones((10, 10), np.float32))
    line = _run_error(capsys, base + ['--fpn', str(tmp_path / 'wrong.npz'), '--out', str(tmp_path / 'w')])
    assert 'wrong.npz' in line and '(10, 10)' in line and '(48, 64)' in line


def test_checkpoint_layouts_and_network_sources(tiny, tmp_path, monkeypatch):
    opt, weights, net = tiny
    write_npz(tmp_path / 's.npz', _stream(32, 32, 40, seed=6))
    state = net.state_dict()
    noisy = {k: v + 1.0 if v.is_floating_point() else v for k, v in state.items()}
    # params_ema wins over params; DDP prefixes are stripped
    torch.save({'params': noisy, 'params_ema': {f'module.{k}': v for k, v in state.items()}}, tmp_path / 'ema.pth')
    torch.save(dict(state), tmp_path / 'bare.pth')
    torch.save({'params': state, 'network_g': TINY_NET}, tmp_path / 'self.pth')  # network_g inside, no --opt
    outputs = {}
    for name, extra in (('ema', ['--opt', opt]), ('bare', ['--opt', opt]), ('self', []),
                        ('params', ['--opt', opt, '--param-key', 'params'])):
        ckpt = tmp_path / ('ema.pth' if name == 'params' else f'{name}.pth')
        out = tmp_path / f'out_{name}'
        assert main(
            ['--weights', str(ckpt), '--input',
             str(tmp_path / 's.npz'), '--quiet', '--out',
             str(out)] + extra) == 0
        outputs[name] = _png(out / 'despike' / 's_t000020.png')
    np.testing.assert_array_equal(outputs['ema'], outputs['bare'])
    np.testing.assert_array_equal(outputs['self'], outputs['bare'])
    assert not np.array_equal(outputs['params'], outputs['bare'])

    # without --opt and network_g the default options file is used
    monkeypatch.setattr(infer, 'DEFAULT_OPT', opt)
    assert main([
        '--weights',
        str(tmp_path / 'bare.pth'), '--input',
        str(tmp_path / 's.npz'), '--quiet', '--out',
        str(tmp_path / 'out_default')
    ]) == 0
    np.testing.assert_array_equal(_png(tmp_path / 'out_default' / 'despike' / 's_t000020.png'), outputs['bare'])


def test_refuses_to_overwrite_outputs(stand_in, tmp_path, capsys):
    opt, weights = stand_in
    write_npz(tmp_path / 'o.npz', _stream(24, 24, 30, seed=7))
    argv = [
        '--weights', weights, '--opt', opt, '--input',
        str(tmp_path / 'o.npz'), '--quiet', '--out',
        str(tmp_path / 'out')
    ]
    assert main(argv) == 0
    line = _run_error(capsys, argv)
    assert 'o_t000015.png' in line and '--overwrite' in line
    assert main(argv + ['--overwrite']) == 0


def test_bad_inputs_give_one_line_errors_naming_the_file(tiny, stand_in, tmp_path, capsys):
    opt, weights, _ = tiny
    good = _stream(250, 400, 40, seed=8)
    write_dat(tmp_path / 'good.dat', good)
    (tmp_path / 'corrupt.pth').write_bytes(b'PK\x03\x04 this is not a checkpoint' * 10)
    torch.save({'params': nn.Conv2d(1, 4, 3).state_dict()}, tmp_path / 'other.pth')
    other_arch = tmp_path / 'other_arch.pth'
    _save_weights(other_arch, dict(TINY_NET, num_feat=8))
    write_npz(tmp_path / 'short.npz', good[:6])

    def run(weights_path, input_path, *extra):
        return _run_error(capsys, [
            '--weights',
            str(weights_path), '--opt', opt, '--input',
            str(input_path), '--quiet', '--out',
            str(tmp_path / 'out')
        ] + list(extra))

    line = run(weights, tmp_path / 'good.dat', '--height', '256', '--width', '256')
    assert 'good.dat' in line and 'height=256' in line
    line = run(tmp_path / 'other.pth', tmp_path / 'good.dat')
    assert 'other.pth' in line and 'does not fit DeSpikeNet' in line and 'missing in checkpoint' in line
    assert 'unexpected in checkpoint (bias, weight)' in line
    line = run(other_arch, tmp_path / 'good.dat')
    assert 'other_arch.pth' in line and 'shape mismatches' in line and 'checkpoint (8,' in line
    line = run(tmp_path / 'corrupt.pth', tmp_path / 'good.dat')
    assert 'corrupt.pth' in line and 'truncated, corrupt or not a torch checkpoint' in line
    line = run(tmp_path / 'missing.pth', tmp_path / 'good.dat')
    assert 'missing.pth' in line and 'no such weights file' in line
    line = run(weights, tmp_path / 'absent.dat')
    assert 'absent.dat' in line and 'no such recording' in line
    line = run(weights, tmp_path / 'short.npz')
    assert 'short.npz' in line and '6 frames' in line and 'at least 8' in line
    line = run(weights, tmp_path / 'good.dat', '--center', '2')
    assert 'good.dat' in line and 'centre 2 is out of range' in line and '4..36' in line
    line = run(weights, tmp_path / 'good.dat', '--opt', str(tmp_path / 'nope.yml'))
    assert 'nope.yml' in line
    assert not osp.exists(tmp_path / 'out' / 'despike')  # nothing was written by failed runs


def test_a_recording_cut_off_mid_frame_is_read_to_its_last_whole_frame_with_one_warning(stand_in, tmp_path, capsys):
    opt, weights = stand_in
    spikes = _stream(250, 400, 40, seed=8)
    write_dat(tmp_path / 'good.dat', spikes)
    cut = tmp_path / 'cut.dat'
    cut.write_bytes((tmp_path / 'good.dat').read_bytes()[:-100])  # the camera stopped 100 bytes before the end
    argv = ['--weights', weights, '--opt', opt, '--input', str(cut), '--sliding', '8', '--quiet', '--exposure',
            'fixed', '--out', str(tmp_path / 'out')]
    assert main(argv) == 0
    assert capsys.readouterr().err.strip().splitlines() == [
        f'despike-infer: warning: {cut}: ends in part of a frame (12400 bytes left over after 39 whole frames of '
        '12500 bytes, height=250, width=400, head=False): a recording cut off mid-frame? Reading the 39 whole frames'
    ]
    written = sorted(os.listdir(tmp_path / 'out' / 'despike'))
    assert written == [f'cut_t{c:06d}.png' for c in range(8, 32, 8)]  # centres whose 16 frames lie in frames 0-38
    np.testing.assert_array_equal(_png(tmp_path / 'out' / 'despike' / 'cut_t000024.png'),
                                  to_uint8(2 * spikes[16:32].mean(0)))


def test_window_len_and_out_are_checked_like_the_other_arguments(stand_in, tmp_path, capsys):
    opt, weights = stand_in
    write_npz(tmp_path / 'o.npz', _stream(24, 24, 30, seed=7))
    base = ['--weights', weights, '--opt', opt, '--input', str(tmp_path / 'o.npz'), '--quiet']
    out = ['--out', str(tmp_path / 'out')]
    for bad in ('0', '-3'):
        assert _run_error(capsys, base + out + ['--window-len', bad]) == (
            f'despike-infer: error: --window-len must be a positive number of frames, got {bad}')
    assert main(base + out + ['--window-len', '100000']) == 0
    assert capsys.readouterr().err.strip().splitlines() == [
        f'despike-infer: warning: --window-len 100000 is longer than {tmp_path / "o.npz"} (30 frames): using 30 frames'
    ]
    assert sorted(os.listdir(tmp_path / 'out' / 'despike')) == ['o_t000015.png']
    a_file = tmp_path / 'notes.txt'
    a_file.write_text('not a folder')
    assert _run_error(capsys, base + ['--out', str(a_file)]) == (
        f'despike-infer: error: {a_file}: is a file, not a folder; --out names the folder the images are written to')
    assert _run_error(capsys, base + ['--out', str(a_file / 'sub')]) == (
        f'despike-infer: error: {a_file / "sub"} (at {a_file}): is a file, not a folder; --out names the folder the '
        'images are written to')


def test_module_entry_runs_in_a_subprocess(tiny, tmp_path):
    opt, weights, _ = tiny
    write_npz(tmp_path / 'sub.npz', _stream(32, 48, 40, seed=9), layout='seq')
    cmd = [
        sys.executable, '-m', 'despike_basicsr.inference.infer', '--weights', weights, '--opt', opt, '--input',
        str(tmp_path / 'sub.npz'), '--centers', '18,22', '--out',
        str(tmp_path / 'out')
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert sorted(os.listdir(tmp_path / 'out' / 'despike')) == ['sub_t000018.png', 'sub_t000022.png']
    assert 'despike-infer' in done.stderr  # the progress bar


@pytest.mark.skipif(not osp.isfile(infer.PRETRAINED_WEIGHTS), reason='the pretrained weights are not built yet')
def test_input_alone_uses_the_shipped_weights(tmp_path):
    write_dat(tmp_path / 'rec.dat', _stream(250, 400, 200, seed=9))
    assert main(['--input', str(tmp_path / 'rec.dat'), '--out', str(tmp_path / 'out'), '--quiet']) == 0
    image = _png(tmp_path / 'out' / 'despike' / 'rec_t000100.png')
    assert image.shape == (250, 400) and 10 < image.mean() < 245


def test_fpn_auto_estimates_gamma_from_the_recording_or_says_why_not(stand_in, tmp_path, capsys):
    from despike_basicsr.spike import fpn_scene
    from despike_basicsr.spike.camera import sample_fpn
    from despike_basicsr.spike.io import unpack_time
    opt, weights = stand_in
    shape, steps, margin = (48, 72), 1500, 24
    gain, _ = sample_fpn(shape, gain_std=0.05, seed=3)
    camera = dict(fpn_scene.BENCH_CAMERA, electrons=0.0)
    source = fpn_scene.fit_source(fpn_scene.skimage_scene('camera'), shape, margin)
    spikes = unpack_time(fpn_scene.simulate_moving(source, shape, steps, 0.3, gain, camera, 0, margin), steps)
    write_dat(tmp_path / 'long.dat', spikes)
    base = ['--weights', weights, '--opt', opt, '--height', '48', '--width', '72', '--quiet', '--fpn', 'auto']
    assert main(base + ['--input', str(tmp_path / 'long.dat'), '--out', str(tmp_path / 'out')]) == 0
    assert 'despike-infer: --fpn auto: scene-based estimate from 1500 steps' in capsys.readouterr().err
    write_dat(tmp_path / 'short.dat', spikes[:300])
    line = _run_error(capsys, base + ['--input', str(tmp_path / 'short.dat'), '--out', str(tmp_path / 'out2')])
    assert line == ('despike-infer: error: --fpn auto: recording too short: 300 steps, need 1000 (a scene-based FPN '
                    'estimate needs the scene to move across the sensor meanwhile)')


def test_correction_strength_flag_is_checked(stand_in, tmp_path, capsys):
    opt, weights = stand_in
    write_npz(tmp_path / 'clip.npz', _stream(32, 40, 24, seed=5))
    base = ['--weights', weights, '--opt', opt, '--input', str(tmp_path / 'clip.npz'), '--quiet']
    line = _run_error(capsys, base + ['--correction-strength', '3', '--out', str(tmp_path / 'a')])
    assert 'correction strength must be in [0, 2], got 3.0' in line
    line = _run_error(capsys, base + ['--correction-strength', '0.5', '--out', str(tmp_path / 'b')])
    assert 'no correction to scale' in line  # the stand-in predicts the image directly
    assert main(base + ['--correction-strength', '1', '--out', str(tmp_path / 'c')]) == 0
    line = _run_error(capsys, base + ['--correction-threshold', '-1', '--out', str(tmp_path / 'd')])
    assert 'correction threshold must be in [0, 255] grey levels, got -1.0' in line
    line = _run_error(capsys, base + ['--correction-threshold', '4', '--out', str(tmp_path / 'e')])
    assert 'no correction to threshold' in line
    assert main(base + ['--correction-threshold', '0', '--out', str(tmp_path / 'f')]) == 0
