"""Command-line tools: despike-simulate, despike-reconstruct, despike-calibrate-fpn."""
import cv2
import numpy as np
import pytest

from despike_basicsr.spike.cli import calibrate_fpn_main, reconstruct_main, simulate_main
from despike_basicsr.spike.fpn import load_fpn
from despike_basicsr.spike.io import load_spikes, read_dat, write_dat
from despike_basicsr.spike.optics import display_to_linear, gaussian_blur, linear_to_display


@pytest.fixture()
def sharp_png(tmp_path):
    yy, xx = np.mgrid[0:24, 0:32]
    img = (40 + 180 * ((xx // 8 + yy // 8) % 2)).astype(np.uint8)
    path = tmp_path / 'sharp.png'
    cv2.imwrite(str(path), img)
    return path, img


def one_line_error(capsys, prog):
    err = capsys.readouterr().err.strip()
    assert err.startswith(f'{prog}: error: ') and '\n' not in err and 'Traceback' not in err
    return err


def test_simulate_then_reconstruct_recovers_the_blurred_image(tmp_path, sharp_png, capsys):
    image, img = sharp_png
    dat = tmp_path / 's.dat'
    assert simulate_main([str(image), '--out', str(dat), '--steps', '800', '--sigma', '1.5', '--seed', '3']) == 0
    spikes = read_dat(dat, 24, 32)
    assert spikes.shape == (800, 24, 32)
    png = tmp_path / 'r.png'
    assert reconstruct_main(['--method', 'tfp', '--input', str(dat), '--height', '24', '--width', '32', '--window',
                             '800', '--out', str(png)]) == 0
    recon = cv2.imread(str(png), cv2.IMREAD_UNCHANGED).astype(np.float64) / 255
    expected = linear_to_display(gaussian_blur(display_to_linear(img / 255.0), 1.5))
    assert np.sqrt(np.mean((recon - expected)**2)) < 0.02
    assert 'wrote' in capsys.readouterr().out


def test_simulate_with_depth_and_lens_to_npz(tmp_path, sharp_png):
    image, _ = sharp_png
    depth = np.full((24, 32), 2.0)
    depth[:, 16:] = 5.0
    np.save(tmp_path / 'depth.npy', depth)
    out = tmp_path / 's.npz'
    assert simulate_main([str(image), '--out', str(out), '--steps', '64', '--depth', str(tmp_path / 'depth.npy'),
                          '--focal-length-mm', '50', '--f-number', '2', '--focus-m', '2', '--gain-std', '0.058',
                          '--shot-noise', '100', '--no-progress']) == 0
    assert load_spikes(out).shape == (64, 24, 32)


def test_refuses_to_overwrite_without_flag(tmp_path, sharp_png, capsys):
    image, _ = sharp_png
    out = tmp_path / 's.dat'
    out.write_bytes(b'keep')
    assert simulate_main([str(image), '--out', str(out), '--steps', '8']) == 2
    assert 'exists; pass --overwrite' in one_line_error(capsys, 'despike-simulate')
    assert out.read_bytes() == b'keep'
    assert simulate_main([str(image), '--out', str(out), '--steps', '8', '--overwrite']) == 0
    assert read_dat(out, 24, 32).shape == (8, 24, 32)


def test_user_errors_are_one_line_with_exit_code_2(tmp_path, sharp_png, capsys):
    image, _ = sharp_png
    assert simulate_main([str(tmp_path / 'none.png'), '--out', str(tmp_path / 'a.dat')]) == 2
    assert 'none.png: no such image file' in one_line_error(capsys, 'despike-simulate')
    assert simulate_main([str(image), '--out', str(tmp_path / 'a.dat'), '--depth', 'd.npy']) == 2
    assert '--depth needs --focal-length-mm' in one_line_error(capsys, 'despike-simulate')
    assert simulate_main([str(image), '--out', str(tmp_path / 'a.txt')]) == 2
    assert "extension must be one of .dat, .npz, found '.txt'" in one_line_error(capsys, 'despike-simulate')
    bad = tmp_path / 'bad.dat'
    bad.write_bytes(bytes(12499))  # less than one 250x400 frame
    assert reconstruct_main(['--method', 'tfi', '--input', str(bad), '--out', str(tmp_path / 'x.png')]) == 2
    assert 'bad.dat: size 12499 bytes is not a whole number of frames' in one_line_error(capsys, 'despike-reconstruct')
    with pytest.raises(SystemExit) as exc:
        reconstruct_main(['--method', 'nope', '--input', str(bad), '--out', 'x.png'])
    assert exc.value.code == 2


def test_calibrate_fpn_command(tmp_path, capsys):
    from despike_basicsr.spike.camera import sample_fpn, simulate
    gain, _ = sample_fpn((10, 16), seed=1)
    rec = tmp_path / 'flat.dat'
    write_dat(rec, simulate(np.full((10, 16), 0.5, np.float32), 4000, gain=gain, seed=2), head=True)
    out = tmp_path / 'fpn.npz'
    assert calibrate_fpn_main(['--uniform', str(rec), '--out', str(out), '--height', '10', '--width', '16',
                               '--head']) == 0
    gamma = load_fpn(out, shape=(10, 16))
    truth = np.median(gain) / gain
    assert np.sqrt(np.mean((gamma / truth - 1)**2)) < 0.01
    assert '0 hot/dead pixels' in capsys.readouterr().out
    assert calibrate_fpn_main(['--uniform', str(rec), '--out', str(tmp_path / 'g.npz'), '--height', '10', '--width',
                               '16', '--head', '--reference', 'corner']) == 2
    message = one_line_error(capsys, 'despike-calibrate-fpn')
    assert "--reference must be median, mean or ROW,COL, got 'corner'" in message
    assert calibrate_fpn_main(['--uniform', str(rec), '--out', str(tmp_path / 'g.npz'), '--height', '2000',
                               '--width', '1000']) == 2  # less than one frame of that size
    assert 'flat.dat: size' in one_line_error(capsys, 'despike-calibrate-fpn')


def test_simulate_reads_colour_and_depth_exactly_as_data_preparation_does(tmp_path):
    """One reader: per-channel linearisation then Rec. 709 luminance, and depth images in millimetres by default."""
    from despike_basicsr.data import preparation
    from despike_basicsr.spike.camera import simulate
    from despike_basicsr.spike.optics import ThinLens, render_depth_defocus
    rng = np.random.default_rng(0)
    colour = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
    colour[..., 0] = 255  # saturated red: display-value BT.601 and linear Rec. 709 differ a lot here
    cv2.imwrite(str(tmp_path / 'colour.png'), colour)
    depth_mm = np.full((12, 16), 2000, np.uint16)
    depth_mm[:, 8:] = 5000
    cv2.imwrite(str(tmp_path / 'depth.png'), depth_mm)
    out = tmp_path / 'c.npz'
    assert simulate_main([str(tmp_path / 'colour.png'), '--out', str(out), '--steps', '32', '--seed', '4',
                          '--depth', str(tmp_path / 'depth.png'), '--focal-length-mm', '50', '--f-number', '2',
                          '--focus-m', '2', '--no-progress']) == 0
    linear = preparation.read_linear_intensity(str(tmp_path / 'colour.png'))
    depth = preparation.read_depth(str(tmp_path / 'depth.png'))
    np.testing.assert_allclose(depth, np.where(depth_mm == 2000, 2.0, 5.0), rtol=1e-6)
    lens = ThinLens(focal_length=0.05, f_number=2.0, focus_distance=2.0, pixel_pitch=20e-6)
    blurred = np.clip(render_depth_defocus(linear, depth, lens, num_layers=16), 0.0, 1.0).astype(np.float32)
    np.testing.assert_array_equal(load_spikes(str(out)), simulate(blurred, 32, seed=4))
