"""Integrate-and-fire simulator: firing rates, the closed form, chunking, determinism, noise, torch path, errors."""
import numpy as np
import pytest
import torch

from despike_basicsr.spike.camera import firing_rate, sample_fpn, simulate, spike_count_closed_form
from despike_basicsr.spike.io import pack_time


def reference_loop(increment, steps, a0, threshold):
    """The plain per-step model in float64: A += r; s = A >= θ; A -= θ·s."""
    a = np.array(a0, dtype=np.float64)
    out = np.empty((steps, ) + a.shape, np.uint8)
    for t in range(steps):
        a += increment
        s = a >= threshold
        a -= threshold * s
        out[t] = s
    return out


def test_constant_light_fires_at_eta_gain_intensity_over_theta():
    rng = np.random.default_rng(0)
    intensity = rng.uniform(0.2, 1.0, (24, 24)).astype(np.float32)
    gain, _ = sample_fpn((24, 24), gain_std=0.058, seed=1)
    eta, theta, steps = 0.8, 2.0, 2000
    spikes = simulate(intensity, steps, threshold=theta, eta=eta, gain=gain, seed=2)
    measured = spikes.mean(axis=0)
    expected = eta * gain * intensity / theta
    assert np.max(np.abs(measured / expected - 1)) < 0.01
    np.testing.assert_allclose(firing_rate(intensity, theta, eta, gain), expected, rtol=1e-6)


def test_closed_form_matches_per_step_loop_exactly_on_dyadic_values():
    # increments and A(0) on a 1/256 grid make every float operation exact, so any mismatch is a model error
    rng = np.random.default_rng(3)
    theta = 2.0
    increment = rng.integers(0, 257, (9, 11)) / 256.0 * theta
    a0 = rng.integers(0, 256, (9, 11)) / 256.0 * theta
    steps = 300
    got = simulate(increment.astype(np.float32), steps, threshold=theta, initial_potential=a0)
    np.testing.assert_array_equal(got, reference_loop(increment, steps, a0, theta))
    counts = spike_count_closed_form(a0, increment, np.arange(steps + 1)[:, None, None], theta)
    np.testing.assert_array_equal(got, np.minimum(np.diff(counts, axis=0), 1))


def test_closed_form_agrees_with_float_loop_on_random_values():
    rng = np.random.default_rng(4)
    theta = 2.0
    increment = rng.random((20, 20)).astype(np.float32)
    a0 = rng.random((20, 20)) * theta
    got = simulate(increment, 1000, threshold=theta, initial_potential=a0)
    ref = reference_loop(increment.astype(np.float64), 1000, a0, theta)
    assert np.mean(got != ref) < 1e-3  # rounding may move a spike whose potential lands within 1e-7 of θ
    assert np.max(np.abs(got.sum(0).astype(int) - ref.sum(0))) <= 1


def test_static_equals_constant_time_varying_and_callable():
    intensity = np.random.default_rng(5).random((7, 9)).astype(np.float32)
    static = simulate(intensity, 123, seed=9)
    stream = simulate(np.repeat(intensity[None], 123, axis=0), 123, seed=9)
    func = simulate(lambda t: np.repeat(intensity[None], len(t), axis=0), 123, seed=9)
    np.testing.assert_array_equal(static, stream)
    np.testing.assert_array_equal(static, func)


def test_deterministic_for_a_seed():
    intensity = np.random.default_rng(6).random((8, 8)).astype(np.float32)
    a = simulate(intensity, 200, seed=1, shot_noise=True)
    assert np.array_equal(a, simulate(intensity, 200, seed=1, shot_noise=True))
    assert not np.array_equal(a, simulate(intensity, 200, seed=2, shot_noise=True))


@pytest.mark.parametrize('noise', [False, True])
def test_long_stream_chunked_equals_unchunked(noise):
    rng = np.random.default_rng(7)
    frames = rng.random((3000, 12, 10)).astype(np.float32)
    gain, dark = sample_fpn((12, 10), dark_rate=0.01, dark_std=0.005, seed=8)
    kwargs = dict(gain=gain, dark=dark, shot_noise=50.0 if noise else False, seed=11)
    whole = simulate(frames, 3000, chunk_steps=4096, **kwargs)
    np.testing.assert_array_equal(simulate(frames, 3000, chunk_steps=8, **kwargs), whole)
    np.testing.assert_array_equal(simulate(frames, 3000, chunk_steps=100, **kwargs), whole)  # rounded to 96
    static = simulate(frames[0], 3000, chunk_steps=8, **kwargs)
    np.testing.assert_array_equal(simulate(frames[0], 3000, chunk_steps=2048, **kwargs), static)


@pytest.mark.parametrize('shape', [(5, 7), (8, 8)])
@pytest.mark.parametrize('steps', [16, 21])
def test_packed_output_matches_pack_time(shape, steps):
    rng = np.random.default_rng(sum(shape) + steps)
    intensity = rng.random(shape).astype(np.float32)
    frames = rng.random((steps, ) + shape).astype(np.float32)
    for scene in (intensity, frames):
        plain = simulate(scene, steps, seed=3)
        packed = simulate(scene, steps, seed=3, packed=True)
        assert packed.shape == ((steps + 7) // 8, ) + shape
        np.testing.assert_array_equal(packed, pack_time(plain))


def test_dark_current_and_saturation():
    zero = np.zeros((6, 6), np.float32)
    dark_only = simulate(zero, 2000, dark=0.1, seed=0)
    assert abs(dark_only.mean() - 0.05) < 0.001
    assert simulate(zero, 50, seed=0).sum() == 0  # no light, no dark current: no spike
    saturated = simulate(np.full((3, 3), 1.0, np.float32), 50, eta=3.0, threshold=2.0, seed=0)
    assert saturated.all()  # an increment above θ fires every step, never twice


def test_shot_noise_keeps_the_mean_rate_and_adds_variance():
    intensity = np.full((32, 32), 0.5, np.float32)
    clean = simulate(intensity, 2000, seed=1)
    noisy = simulate(intensity, 2000, seed=1, shot_noise=5.0)
    assert abs(noisy.mean() - 0.25) < 0.005
    # noise-free counts differ by at most one; Poisson noise spreads them
    assert np.ptp(clean.sum(0)) <= 1
    assert np.std(noisy.sum(0)) > 3


def test_torch_cpu_path_matches_numpy_and_returns_tensors():
    rng = np.random.default_rng(12)
    intensity = rng.random((9, 10)).astype(np.float32)
    frames = rng.random((40, 9, 10)).astype(np.float32)
    gain, dark = sample_fpn((9, 10), dark_rate=0.02, seed=2)
    for scene in (intensity, frames):
        ref = simulate(scene, 40, gain=gain, dark=dark, seed=4)
        out = simulate(torch.from_numpy(scene), 40, gain=torch.from_numpy(gain), dark=dark, seed=4, chunk_steps=16)
        assert isinstance(out, torch.Tensor) and out.dtype == torch.uint8
        np.testing.assert_array_equal(out.numpy(), ref)
        packed = simulate(torch.from_numpy(scene), 40, gain=gain, dark=dark, seed=4, packed=True)
        np.testing.assert_array_equal(packed.numpy(), pack_time(ref))
    noisy = simulate(torch.full((16, 16), 0.5), 2000, seed=1, shot_noise=5.0)
    assert abs(noisy.float().mean().item() - 0.25) < 0.005
    assert torch.equal(noisy, simulate(torch.full((16, 16), 0.5), 2000, seed=1, shot_noise=5.0))


def test_sample_fpn_statistics_and_determinism():
    gain, dark = sample_fpn((200, 200), gain_std=0.058, dark_rate=0.01, dark_std=0.002, seed=5)
    assert gain.dtype == np.float32 and dark.shape == (200, 200)
    assert abs(gain.mean() - 1) < 0.002 and abs(gain.std() - 0.058) < 0.002
    assert abs(dark.mean() - 0.01) < 0.0005 and (dark >= 0).all()
    np.testing.assert_array_equal(gain, sample_fpn((200, 200), gain_std=0.058, seed=5)[0])


def test_bad_inputs_raise_clear_errors():
    img = np.full((4, 4), 0.5, np.float32)
    with pytest.raises(ValueError, match='steps must be a positive integer'):
        simulate(img, 0)
    with pytest.raises(ValueError, match='intensity must be finite and >= 0'):
        simulate(-img, 10)
    with pytest.raises(ValueError, match=r'gain must be a scalar or shaped \(4, 4\), found \(3, 4\)'):
        simulate(img, 10, gain=np.ones((3, 4)))
    with pytest.raises(ValueError, match=r'initial_potential must lie in \[0, threshold=2.0\)'):
        simulate(img, 10, initial_potential=np.full((4, 4), 2.5))
    with pytest.raises(ValueError, match='has 5 frames, fewer than steps=10'):
        simulate(np.zeros((5, 4, 4), np.float32), 10)
    with pytest.raises(ValueError, match=r'callable returned shape \(3, 4\)'):
        simulate(lambda t: np.zeros((3, 4)), 10)
    with pytest.raises(ValueError, match='shot_noise must be True or a positive'):
        simulate(img, 10, shot_noise=-1.0)
    with pytest.raises(ValueError, match='sample_fpn: gain_std'):
        sample_fpn((2, 2), gain_std=-0.1)
