"""Registration-based FPN estimate: the global shift of two frames, the mosaic equations on exact data, a known gain
map recovered from a small simulated pan, a uniform sensor, a still recording and frames with no common motion."""
import numpy as np
import pytest

from despike_basicsr.spike import fpn_scene
from despike_basicsr.spike.camera import sample_fpn, simulate
from despike_basicsr.spike.fpn import (SceneStatistics, _Mosaic, effective_positions, estimate_fpn_from_scene,
                                       estimate_fpn_from_stats, phase_correlation_shift, registered_shift,
                                       registration_gain, robust_shrinkage, structured_shrinkage)
from despike_basicsr.spike.io import unpack_time

SHAPE = (40, 60)
CAMERA = dict(fpn_scene.BENCH_CAMERA, electrons=0.0)


@pytest.fixture(scope='module')
def photo():
    return fpn_scene.skimage_scene('camera')


@pytest.fixture(scope='module')
def gain():
    g, _ = sample_fpn(SHAPE, gain_std=0.05, seed=5, column_std=0.02)
    return g


def pan(photo, gain, steps, seed=0, margin=16, rate=0.3):
    source = fpn_scene.fit_source(photo, SHAPE, margin)
    packed = fpn_scene.simulate_moving(source, SHAPE, steps, rate, gain, CAMERA, seed, margin, speed=0.1)
    return unpack_time(packed, steps)


def test_global_shift_of_two_frames(photo):
    image = fpn_scene.fit_source(photo, (64, 96), 12)
    reference = image[12:76, 12:108]
    moving = image[15:79, 10:106]  # moving(x) = reference(x + (3, -2))
    dy, dx, quality = phase_correlation_shift(reference, moving)
    assert (dy, dx) == (pytest.approx(3, abs=0.1), pytest.approx(-2, abs=0.1)) and quality > 0.5
    fpn = np.random.default_rng(0).normal(1, 0.05, reference.shape)  # the same FPN on both: no pull towards 0
    big = image[12 + 9:76 + 9, 12 - 11:108 - 11]
    dy, dx, _ = registered_shift(reference * fpn, big * fpn)
    assert (dy, dx) == (pytest.approx(9, abs=0.15), pytest.approx(-11, abs=0.15))


def test_mosaic_equations_recover_gain_from_exact_counts(photo):
    rng = np.random.default_rng(1)
    scene = fpn_scene.fit_source(photo, SHAPE, 10) + 0.05
    g = rng.normal(1.0, 0.05, SHAPE)
    mosaic = _Mosaic(SHAPE, 12, 0)
    for _ in range(200):  # integer positions: c_k(x) = g(x)·L(x + p_k) exactly
        p = rng.integers(-10, 11, size=2)
        mosaic.splat(g * scene[10 + p[0]:10 + p[0] + SHAPE[0], 10 + p[1]:10 + p[1] + SHAPE[1]], p.astype(float))
    assert effective_positions(mosaic.kernel) > 100
    estimate, counts = registration_gain([mosaic.compact()], iterations=30)
    truth = g / np.median(g)
    assert counts.shape == SHAPE and np.sqrt(np.mean((estimate / truth - 1)**2)) < 2e-3


def test_known_gain_map_recovered_by_registration(photo, gain):
    spikes = pan(photo, gain, 6000)
    calib = estimate_fpn_from_scene(spikes)
    assert calib.info['estimator'] == 'registration' and calib.info['registered_fraction'] > 0.9
    error = fpn_scene.gamma_relative_error(calib.gamma, gain)
    constant = fpn_scene.gamma_relative_error(estimate_fpn_from_scene(spikes, registration=False).gamma, gain)
    assert error < 0.015 and error < 0.5 * constant, (error, constant)  # 0.9 % and 3.6 % here
    assert 'registration' in calib.note and np.median(calib.confidence) > 0.5


def test_uniform_sensor_gives_gamma_one_by_registration(photo):
    calib = estimate_fpn_from_scene(pan(photo, np.ones(SHAPE, np.float32), 6000, seed=1))
    assert calib.info['estimator'] == 'registration'
    raw = calib.response / np.median(calib.response)  # the registration gain before shrinkage: its noise alone
    assert float(np.sqrt(np.mean((raw - 1)**2))) < 0.025
    assert float(np.sqrt(np.mean((calib.gamma / np.median(calib.gamma) - 1)**2))) < 0.006


def test_still_recording_is_low_confidence(photo, gain):
    still = fpn_scene.fit_source(photo, SHAPE, 0)
    spikes = simulate(still * np.float32(0.6), 2000, gain=gain, seed=2)
    stats = SceneStatistics(SHAPE, 2000)
    stats.add(spikes)
    stats.end_recording()
    calib = estimate_fpn_from_stats(stats)
    assert calib.info['estimator'] == 'constant-statistics' and calib.info['static'] and 'static scene' in calib.note
    np.testing.assert_array_equal(calib.gamma, 1.0)
    assert float(calib.confidence.max()) < 0.1


def test_frames_without_a_common_motion_fall_back(gain):
    rng = np.random.default_rng(3)  # a new random texture every 16 steps: nothing registers
    light = np.repeat(rng.uniform(0.2, 1.0, (125, ) + SHAPE).astype(np.float32), 16, axis=0)
    spikes = simulate(light, 2000, gain=gain, seed=4)
    calib = estimate_fpn_from_scene(spikes)
    assert calib.info['estimator'] == 'constant-statistics'
    assert calib.info['mosaics'] == 0 or calib.info['registered_fraction'] < 0.5


def test_structured_shrinkage_keeps_column_gains_a_single_pixel_would_lose():
    rng = np.random.default_rng(3)
    column = 0.03 * rng.standard_normal(200)
    white = 0.01 * rng.standard_normal((100, 200))
    truth = column[None, :] + white
    error = np.full(truth.shape, 0.08)  # per-pixel noise 8x the white spread: a pixel alone is mostly noise
    estimate = truth + error * rng.standard_normal(truth.shape)
    good = np.ones(truth.shape, bool)
    per_pixel = robust_shrinkage(estimate, error, good) * estimate
    structured = structured_shrinkage(estimate, error, good)

    def rms(x):
        return float(np.sqrt(np.mean(x**2)))

    assert rms(structured - truth) < 0.5 * rms(per_pixel - truth)  # the column pattern survives
    assert rms(structured - truth) < rms(truth)  # and it is better than doing nothing
    flat = structured_shrinkage(error * rng.standard_normal(truth.shape), error, good)
    assert rms(flat) < 0.01  # pure noise: nearly nothing is kept
