"""FPN calibration: gain recovery on simulation, hot/dead pixels, files and their validation."""
import numpy as np
import pytest

from despike_basicsr.spike.camera import sample_fpn, simulate
from despike_basicsr.spike.fpn import FPNCalibration, calibrate_fpn, load_fpn, save_fpn
from despike_basicsr.spike.io import SpikeFileError, write_dat

SHAPE = (32, 32)


def gamma_rms_error(calib, gain):
    """RMS relative error of γ against the true correction median(g) / g."""
    truth = np.median(gain) / gain
    return float(np.sqrt(np.mean((calib.gamma / truth - 1)**2)))


@pytest.fixture(scope='module')
def uniform_recording():
    gain, _ = sample_fpn(SHAPE, gain_std=0.058, seed=10)
    # shot noise with 5 photo-electrons per unit potential (10 per spike) makes the count noise dominate,
    # so the estimate follows the 1/sqrt(frames) law of a renewal process
    spikes = simulate(np.full(SHAPE, 0.5, np.float32), 20000, gain=gain, shot_noise=5.0, seed=11)
    return gain, spikes


def test_known_gain_map_recovered_within_one_percent_from_20000_frames(uniform_recording):
    gain, spikes = uniform_recording
    calib = calibrate_fpn([spikes])
    assert isinstance(calib, FPNCalibration) and calib.gamma.dtype == np.float32
    assert not calib.bad.any()
    assert gamma_rms_error(calib, gain) < 0.01
    assert calib.ref == pytest.approx(np.median(calib.response), rel=1e-6)


def test_error_shrinks_like_inverse_square_root_of_frames(uniform_recording):
    gain, spikes = uniform_recording
    frames = np.array([1250, 5000, 20000])
    errors = np.array([gamma_rms_error(calibrate_fpn([spikes[:n]]), gain) for n in frames])
    slope = np.polyfit(np.log(frames), np.log(errors), 1)[0]
    assert -0.7 < slope < -0.35, (errors, slope)
    # size as expected: relative count noise 1/sqrt(N·m) with N = rate·frames spikes and m = 10 electrons per spike
    expected = 1 / np.sqrt(0.25 * frames * 10)
    np.testing.assert_allclose(errors, expected, rtol=0.3)


def test_dark_subtraction_hot_and_dead_pixels():
    gain, dark = sample_fpn((16, 16), gain_std=0.058, dark_rate=0.02, dark_std=0.01, seed=1)
    gain[3, 4] = 0.0  # dead
    dark[10, 11] = 1.5  # hot: fires in the dark
    light = np.full((16, 16), 0.5, np.float32)
    uniform = simulate(light, 4000, gain=gain, dark=dark, seed=2)
    capped = simulate(np.zeros((16, 16), np.float32), 4000, dark=dark, seed=3)
    calib = calibrate_fpn([uniform[:2000], uniform[2000:]], dark_recordings=[capped])
    assert calib.bad[3, 4] and calib.bad[10, 11] and calib.bad.sum() == 2
    assert calib.gamma[3, 4] == 1.0 and calib.gamma[10, 11] == 1.0
    good = ~calib.bad
    truth = np.median(gain[good]) / gain[good]
    with_dark = np.sqrt(np.mean((calib.gamma[good] / truth - 1)**2))
    no_dark = calibrate_fpn([uniform])
    without = np.sqrt(np.mean((no_dark.gamma[good] / truth - 1)**2))
    assert with_dark < 0.01 < without  # the dark offset biases the response unless subtracted
    np.testing.assert_allclose(calib.dark, capped.mean(0), rtol=1e-6)


def test_reference_pixel_and_files_equal_arrays(tmp_path):
    gain, _ = sample_fpn((6, 10), seed=4)
    spikes = simulate(np.full((6, 10), 0.6, np.float32), 3000, gain=gain, seed=5)
    calib = calibrate_fpn([spikes], reference=(2, 3))
    assert calib.gamma[2, 3] == pytest.approx(1.0)
    path = tmp_path / 'u.dat'
    write_dat(path, spikes)
    from_file = calibrate_fpn([str(path)], reference=(2, 3), height=6, width=10, chunk_frames=700)
    np.testing.assert_allclose(from_file.gamma, calib.gamma, rtol=1e-6)
    with pytest.raises(ValueError, match=r'reference pixel \(9, 0\) outside'):
        calibrate_fpn([spikes], reference=(9, 0))
    with pytest.raises(SpikeFileError, match=r'differs from the first recording'):
        calibrate_fpn([spikes, spikes[:, :5]])
    with pytest.raises(SpikeFileError, match=r'u\.dat.*not a whole number of frames'):
        calibrate_fpn([str(path)], height=1000, width=1000)  # less than one frame of that size


def test_save_load_round_trip_and_validation(tmp_path):
    gamma = np.linspace(0.9, 1.1, 12, dtype=np.float32).reshape(3, 4)
    calib = FPNCalibration(response=1 / gamma, gamma=gamma, dark=np.zeros((3, 4), np.float32),
                           bad=np.zeros((3, 4), bool), ref=1.0)
    path = tmp_path / 'fpn.npz'
    save_fpn(path, calib)
    with np.load(path) as archive:
        assert set(archive.files) == {'gamma', 'response', 'dark', 'bad', 'ref'}
    np.testing.assert_array_equal(load_fpn(path, shape=(3, 4)), gamma)
    with pytest.raises(SpikeFileError, match=r'fpn\.npz: gamma shape \(3, 4\) does not match the expected \(4, 4\)'):
        load_fpn(path, shape=(4, 4))
    with pytest.raises(FileNotFoundError, match='missing.npz'):
        load_fpn(tmp_path / 'missing.npz')
    for name, bad_gamma, message in (('nan', np.full((2, 2), np.nan, np.float32), '4 NaN/inf'),
                                     ('zero', np.array([[1, 0], [-1, 1]], np.float32), '2 zero or negative'),
                                     ('ints', np.ones((2, 2), np.int64), 'float array, found dtype int64'),
                                     ('flat', np.ones(4, np.float32), r'\(H, W\), found shape \(4,\)')):
        np.savez(tmp_path / f'{name}.npz', gamma=bad_gamma)
        with pytest.raises(SpikeFileError, match=rf'{name}\.npz: .*{message}'):
            load_fpn(tmp_path / f'{name}.npz')
    np.savez(tmp_path / 'nokey.npz', g=gamma)
    with pytest.raises(SpikeFileError, match=r'nokey\.npz: FPN calibration needs key "gamma", found keys \[\'g\'\]'):
        load_fpn(tmp_path / 'nokey.npz')
