"""Scene-based FPN estimate: gains recovered from a moving scene, a uniform sensor, a static scene, bad input, the
``despike-calibrate-fpn --from-scene`` command and the function ``despike-infer --fpn auto`` calls."""
import numpy as np
import pytest

from despike_basicsr.spike import fpn_scene
from despike_basicsr.spike.camera import sample_fpn, simulate
from despike_basicsr.spike.cli import calibrate_fpn_main
from despike_basicsr.spike.fpn import (FPNCalibration, SceneFPNError, SceneStatistics, calibrate_fpn,
                                       estimate_fpn_for_recording, estimate_fpn_from_scene, load_fpn,
                                       load_fpn_calibration, save_fpn)
from despike_basicsr.spike.io import RecordingReader, write_dat

SHAPE = (48, 72)
CAMERA = dict(fpn_scene.BENCH_CAMERA, electrons=0.0)  # noise-free integrate and fire: fast to simulate


@pytest.fixture(scope='module')
def photo():
    return fpn_scene.skimage_scene('camera')


def moving(photo, gain, steps, rate=0.3, seed=0, margin=24):
    packed = fpn_scene.simulate_moving(fpn_scene.fit_source(photo, SHAPE, margin), SHAPE, steps, rate, gain, CAMERA,
                                       seed, margin)
    from despike_basicsr.spike.io import unpack_time
    return unpack_time(packed, steps)


@pytest.fixture(scope='module')
def structured_gain():
    gain, _ = sample_fpn(SHAPE, gain_std=0.05, seed=3, column_std=0.02)
    return gain


@pytest.fixture(scope='module')
def moving_recording(photo, structured_gain):
    return moving(photo, structured_gain, 8000)


def test_known_gain_map_recovered_from_a_moving_scene(moving_recording, structured_gain):
    calib = estimate_fpn_from_scene(moving_recording)
    assert isinstance(calib, FPNCalibration) and calib.method == 'scene' and calib.gamma.dtype == np.float32
    error = fpn_scene.gamma_relative_error(calib.gamma, structured_gain)
    none = fpn_scene.gamma_relative_error(np.ones(SHAPE), structured_gain)
    assert error < 0.6 * none, (error, none)
    assert not calib.info['static'] and calib.info['moving_fraction'] > 0.9
    assert 0 < np.median(calib.confidence) <= 1 and 'scene-based estimate' in calib.note
    # the column pattern is found: the estimated column means follow the true ones
    truth = np.log(fpn_scene.true_correction(structured_gain)).mean(axis=0)
    found = np.log(calib.gamma).mean(axis=0)
    assert np.corrcoef(truth, found)[0, 1] > 0.7


def test_streaming_chunks_and_recordings_agree(moving_recording):
    whole = estimate_fpn_from_scene(moving_recording)
    chunked = estimate_fpn_from_scene(moving_recording, chunk_frames=300)  # windows straddle the chunks
    np.testing.assert_allclose(chunked.gamma, whole.gamma, rtol=1e-5)
    two = estimate_fpn_from_scene([moving_recording[:4000], moving_recording[4000:]])
    assert two.info['recordings'] == 2 and two.info['steps'] == 8000
    np.testing.assert_allclose(two.gamma, whole.gamma, atol=0.02)


def test_uniform_sensor_gives_gamma_near_one(photo):
    spikes = moving(photo, np.ones(SHAPE, np.float32), 8000, seed=1)
    calib = estimate_fpn_from_scene(spikes)
    assert float(np.sqrt(np.mean((calib.gamma / np.median(calib.gamma) - 1)**2))) < 0.02


def test_static_scene_is_detected_and_left_alone(photo, structured_gain):
    still = fpn_scene.fit_source(photo, SHAPE, 0)
    spikes = simulate(still * np.float32(0.6), 3000, gain=structured_gain, seed=2)
    calib = estimate_fpn_from_scene(spikes)
    assert calib.info['static'] and 'static scene' in calib.note
    np.testing.assert_array_equal(calib.gamma, 1.0)
    assert float(calib.confidence.max()) < 0.1


def test_bad_input_names_the_problem(moving_recording):
    with pytest.raises(SceneFPNError, match=r'recording too short: 500 steps, need 1000'):
        estimate_fpn_from_scene(moving_recording[:500])
    with pytest.raises(SceneFPNError, match=r'single frame'):
        estimate_fpn_from_scene(moving_recording[0])
    with pytest.raises(SceneFPNError, match=r'single frame'):
        estimate_fpn_from_scene(moving_recording[:1])
    nan = moving_recording[:1200].astype(np.float32)
    nan[5, 3, 4] = np.nan
    with pytest.raises(SceneFPNError, match=r'1 NaN/inf'):
        estimate_fpn_from_scene(nan)
    with pytest.raises(SceneFPNError, match=r'0 or 1'):
        estimate_fpn_from_scene(moving_recording[:1200] * 2)
    with pytest.raises(SceneFPNError, match=r'differs from the first'):
        estimate_fpn_from_scene([moving_recording[:1200], moving_recording[:1200, :, :10]])
    with pytest.raises(SceneFPNError, match=r'no spikes'):
        estimate_fpn_from_scene(np.zeros((1200, 8, 8), np.uint8))
    with pytest.raises(ValueError, match=r'window'):
        SceneStatistics((4, 4), 100, window=0)


def test_calibration_file_round_trip_and_old_files(tmp_path, moving_recording):
    calib = estimate_fpn_from_scene(moving_recording[:2000])
    path = tmp_path / 'scene.npz'
    save_fpn(path, calib)
    back = load_fpn_calibration(path)
    assert back.method == 'scene' and back.note == calib.note and back.info == calib.info
    np.testing.assert_array_equal(back.confidence, calib.confidence)
    np.testing.assert_array_equal(load_fpn(path, SHAPE), calib.gamma)
    old = tmp_path / 'old.npz'  # the format before scene-based estimates: five keys
    flat = calibrate_fpn([np.ones((50, 4, 4), np.uint8)])
    np.savez(old, gamma=flat.gamma, response=flat.response, dark=flat.dark, bad=flat.bad, ref=np.float64(flat.ref))
    loaded = load_fpn_calibration(old)
    assert loaded.method == 'flat-field' and loaded.confidence is None and loaded.note == ''


def test_calibrate_fpn_command_from_scene(tmp_path, capsys, moving_recording):
    rec = tmp_path / 'scene.dat'
    write_dat(rec, moving_recording[:3000])
    out = tmp_path / 'fpn.npz'
    argv = ['--height', str(SHAPE[0]), '--width', str(SHAPE[1]), '--no-progress']
    assert calibrate_fpn_main(['--from-scene', str(rec), '--out', str(out)] + argv) == 0
    assert 'scene-based estimate from 3000 steps' in capsys.readouterr().out
    calib = load_fpn_calibration(out)
    assert calib.method == 'scene' and calib.gamma.shape == SHAPE
    np.testing.assert_allclose(calib.gamma, estimate_fpn_from_scene(moving_recording[:3000]).gamma, rtol=1e-6)
    short = tmp_path / 'short.dat'
    write_dat(short, moving_recording[:400])
    assert calibrate_fpn_main(['--from-scene', str(short), '--out', str(tmp_path / 'g.npz')] + argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith('despike-calibrate-fpn: error: ') and 'recording too short: 400 steps, need 1000' in err
    assert '\n' not in err
    with pytest.raises(SystemExit):  # one source or the other
        calibrate_fpn_main(['--from-scene', str(rec), '--uniform', str(rec), '--out', str(tmp_path / 'h.npz')])


def test_function_for_fpn_auto(tmp_path, moving_recording):
    rec = tmp_path / 'scene.dat'
    write_dat(rec, moving_recording[:2000])
    reader = RecordingReader(rec, SHAPE[0], SHAPE[1])
    from_reader = estimate_fpn_for_recording(reader)
    np.testing.assert_allclose(from_reader.gamma, estimate_fpn_for_recording(moving_recording[:2000]).gamma,
                               rtol=1e-6)
    with pytest.raises(SceneFPNError, match=r'recording too short: 2000 steps, need 5000'):
        estimate_fpn_for_recording(reader, min_steps=5000)


def test_sample_fpn_structured_terms():
    white, _ = sample_fpn((64, 80), gain_std=0.0, seed=0)
    assert np.all(white == 1.0)
    columns, _ = sample_fpn((64, 80), gain_std=0.0, seed=0, column_std=0.05)
    assert np.allclose(columns, columns[:1]) and 0.03 < columns[0].std() < 0.07
    shaded, _ = sample_fpn((64, 80), gain_std=0.0, seed=0, shading=0.3)
    assert shaded[32, 40] > 0.99 and shaded[0, 0] == pytest.approx(0.7, abs=1e-6)
    with pytest.raises(ValueError, match='shading'):
        sample_fpn((4, 4), shading=1.0)
