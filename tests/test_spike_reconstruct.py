"""TFP / TFI reconstructions and the display mapping."""
import numpy as np
import pytest
import torch

from despike_basicsr.spike.camera import simulate
from despike_basicsr.spike.optics import display_to_linear
from despike_basicsr.spike.reconstruct import classical_display, rate_to_display, tfi, tfp


def psnr(a, b):
    return 10 * np.log10(1.0 / np.mean((np.asarray(a, np.float64) - b)**2))


def test_tfp_of_long_noise_free_stream_reaches_35db_in_display_terms():
    yy, xx = np.mgrid[0:48, 0:48] / 47.0
    display = np.clip(0.1 + 0.8 * (0.5 + 0.5 * np.sin(6 * xx) * np.cos(4 * yy)) + 0.05 * (xx > 0.5), 0, 1)
    linear = display_to_linear(display).astype(np.float32)
    spikes = simulate(linear, 2000, threshold=2.0, eta=1.0, seed=0)
    recon = rate_to_display(tfp(spikes, window=2000), eta=1.0, threshold=2.0)
    assert psnr(recon, display) >= 35.0  # measured on display values (after gamma), the stricter of the two
    assert psnr(tfp(spikes, window=2000) * 2.0, linear) >= 50.0  # linear terms, for reference


def test_tfp_window_is_centred_and_clipped():
    spikes = np.zeros((10, 1, 2), np.uint8)
    spikes[[0, 1, 2, 9], 0, 0] = 1
    assert tfp(spikes, center=5, window=3)[0, 0] == 0.0  # frames 4..6
    assert tfp(spikes, center=1, window=3)[0, 0] == 1.0  # frames 0..2
    assert tfp(spikes, center=0, window=5)[0, 0] == 1.0  # frames 0..2 after clipping
    assert tfp(spikes, center=9, window=5)[0, 0] == pytest.approx(1 / 3)  # frames 7..9
    assert tfp(spikes, window=100)[0, 0] == pytest.approx(0.4)


def test_tfi_interval_and_fallbacks():
    spikes = np.zeros((20, 1, 4), np.uint8)
    spikes[::4, 0, 0] = 1  # period 4
    spikes[3, 0, 1] = 1  # a single spike before the centre: interval closed by a virtual spike at T = 20
    spikes[15, 0, 2] = 1  # a single spike after the centre: virtual spike at -1
    rate = tfi(spikes, center=10)
    np.testing.assert_allclose(rate[0], [1 / 4, 1 / 17, 1 / 16, 0.0])
    periodic = np.zeros((30, 1, 1), np.uint8)
    periodic[2::5] = 1
    assert tfi(periodic, center=12)[0, 0] == pytest.approx(0.2)  # spike exactly at the centre counts as previous
    assert tfi(periodic, center=29)[0, 0] == pytest.approx(1 / 3)  # last spike 27, virtual at 30


def test_torch_and_batched_inputs_match_numpy():
    spikes = (np.random.default_rng(0).random((2, 30, 5, 6)) < 0.3).astype(np.uint8)
    for fn, kwargs in ((tfp, dict(window=9)), (tfi, {})):
        ref = fn(spikes, center=12, **kwargs)
        assert ref.shape == (2, 5, 6) and ref.dtype == np.float32
        np.testing.assert_allclose(fn(spikes[1], center=12, **kwargs), ref[1])
        out = fn(torch.from_numpy(spikes), center=12, **kwargs)
        assert isinstance(out, torch.Tensor)
        np.testing.assert_allclose(out.numpy(), ref, rtol=1e-6)


def test_tfi_estimates_rate_of_simulated_light():
    spikes = simulate(np.full((8, 8), 0.4, np.float32), 200, seed=1)  # rate 0.2 -> interval 5
    np.testing.assert_allclose(tfi(spikes), 0.2, rtol=0.26)  # a 1-step error either way on a 5-step interval


def test_rate_to_display():
    assert rate_to_display(0.5, eta=1.0, threshold=2.0) == pytest.approx(1.0)
    assert rate_to_display(0.125, eta=1.0, threshold=2.0) == pytest.approx(0.25**(1 / 2.2))
    assert rate_to_display(0.1, eta=0.5, threshold=2.0, gamma=1.0) == pytest.approx(0.4)
    assert rate_to_display(0.9) == 1.0  # clipped
    out = rate_to_display(torch.tensor([0.0, 0.5]))
    torch.testing.assert_close(out, torch.tensor([0.0, 1.0]))


def test_bad_inputs():
    with pytest.raises(ValueError, match=r'expected \(T, H, W\).*\(4, 4\)'):
        tfp(np.zeros((4, 4)))
    with pytest.raises(ValueError, match='center 10 is outside the stream of 10 frames'):
        tfi(np.zeros((10, 2, 2), np.uint8), center=10)
    with pytest.raises(ValueError, match='window must be >= 1'):
        tfp(np.zeros((10, 2, 2), np.uint8), window=0)


def test_classical_display_is_rate_to_display_of_tfp_or_tfi_with_fpn_correction():
    spikes = simulate(np.full((6, 7), 0.3, np.float32), 64, seed=1)
    fpn = np.linspace(0.9, 1.1, 42, dtype=np.float32).reshape(6, 7)
    expected = rate_to_display(tfp(spikes, 30, 21) * fpn, eta=1.5, threshold=3.0, gamma=2.0)
    found = classical_display(spikes, 'tfp', 30, 21, eta=1.5, threshold=3.0, gamma=2.0, fpn_gamma=fpn)
    np.testing.assert_array_equal(found, expected)
    np.testing.assert_array_equal(classical_display(spikes, 'tfi'), rate_to_display(tfi(spikes)))
    as_tensor = classical_display(torch.from_numpy(spikes)[None], 'tfp')
    assert torch.is_tensor(as_tensor) and as_tensor.shape == (1, 6, 7)
    with pytest.raises(ValueError, match="method must be one of .*'tfx'"):
        classical_display(spikes, 'tfx')
