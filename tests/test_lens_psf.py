"""Lens-like PSFs (despike_basicsr/spike/lens_psf.py) and layered rendering with any PSF family (spike/optics.py)."""
import math

import numpy as np
import pytest

from despike_basicsr.spike import lens_psf, optics
from despike_basicsr.spike.lens_psf import LensPSF


def test_a_round_iris_is_a_disc_of_the_coc_with_sigma_r_over_2():
    kernel = LensPSF().kernel(16.0)  # diameter 16 px: radius 8
    assert kernel.sum() == pytest.approx(1.0)
    assert lens_psf.psf_sigma(kernel) == pytest.approx(4.0, rel=0.03)
    centre = kernel.shape[0] // 2
    assert kernel[centre, centre] == pytest.approx(kernel[centre, centre + 5], rel=1e-6)  # flat inside
    assert kernel[centre, centre + 9] == 0.0  # nothing outside the circle


def test_small_cocs_are_a_delta_and_the_sign_does_not_change_a_symmetric_disc():
    np.testing.assert_array_equal(LensPSF().kernel(0.6), np.ones((1, 1)))
    np.testing.assert_allclose(LensPSF().kernel(-10.0), LensPSF().kernel(10.0))


def test_rim_swaps_sides_of_the_focus_plane():
    lens = LensPSF(rim=0.8)
    behind, front = lens.kernel(20.0), lens.kernel(-20.0)
    c = behind.shape[0] // 2
    assert behind[c, c + 8] > 2 * behind[c, c]  # bright rim behind the focus plane
    assert front[c, c] > 2 * front[c, c + 8]  # centre-weighted in front of it


def test_polygonal_aperture_and_cats_eye():
    hexagon = lens_psf.aperture_mask(*np.mgrid[-20:21, -20:21].astype(float), radius=20, blades=6, rotation=0.0)
    assert hexagon[20, 40] and not hexagon[0, 20]  # a vertex on the x axis, a flat edge at the top
    assert hexagon.sum() == pytest.approx(1.5 * math.sqrt(3) * 20**2, rel=0.05)  # the hexagon's area
    centre_kernel = LensPSF(vignetting=0.8, field=(0.0, 0.0)).kernel(20.0)
    corner_kernel = LensPSF(vignetting=0.8, field=(0.9, 0.9)).kernel(20.0)
    assert np.count_nonzero(corner_kernel) < 0.8 * np.count_nonzero(centre_kernel)  # clipped towards the corner
    ys, xs = np.nonzero(corner_kernel)
    c = corner_kernel.shape[0] // 2
    assert ys.mean() > c and xs.mean() > c  # the cat's eye lies towards the field direction


def test_draws_are_valid_and_reproducible():
    a = [lens_psf.draw_lens_psf(np.random.default_rng(7), (0.5, -0.2)) for _ in range(2)]
    assert a[0] == a[1]
    for seed in range(30):
        kernel = lens_psf.draw_lens_psf(np.random.default_rng(seed)).kernel(25.0)
        assert kernel.sum() == pytest.approx(1.0) and kernel.min() >= 0
    with pytest.raises(ValueError):
        LensPSF(blades=2)
    with pytest.raises(ValueError):
        LensPSF(rim=1.5)


def test_layered_rendering_with_gaussians_matches_the_thin_lens_renderer():
    rng = np.random.default_rng(0)
    image = rng.uniform(0.1, 1.0, (40, 48))
    lens = optics.ThinLens(focal_length=0.05, f_number=2.0, focus_distance=1.0, pixel_pitch=2e-5)
    depth = np.where(np.arange(48)[None, :] < 24, 1.2, 3.0) * np.ones((40, 1))
    reference = optics.render_depth_defocus(image, depth, lens, num_layers=4)
    signed = lens.signed_coc_px(depth)
    rendered = optics.render_layered_defocus(image, signed, optics.gaussian_psf_for_coc, num_layers=4)
    np.testing.assert_allclose(rendered, reference, atol=1e-9)


def test_layered_rendering_keeps_a_uniform_image_and_blurs_an_edge():
    flat = np.full((32, 32), 0.4)
    coc = np.linspace(-12, 12, 32)[None, :] * np.ones((32, 1))
    out = optics.render_layered_defocus(flat, coc, LensPSF(blades=7, rim=0.5).kernel, num_layers=6)
    np.testing.assert_allclose(out, 0.4, atol=1e-9)
    edge = np.zeros((32, 32))
    edge[:, 16:] = 1.0
    blurred = optics.render_layered_defocus(edge, np.full((32, 32), 10.0), LensPSF().kernel)
    assert 0.05 < blurred[16, 14] < 0.5 < blurred[16, 17] < 0.95
    with pytest.raises(ValueError):
        optics.render_layered_defocus(flat, coc[:, :5], LensPSF().kernel)


def test_convolve_same_is_a_mirrored_convolution():
    rng = np.random.default_rng(1)
    image, kernel = rng.random((9, 11)), rng.random((5, 3))
    padded = np.pad(image, ((2, 2), (1, 1)), mode='symmetric')
    expected = np.zeros_like(image)
    flipped = kernel[::-1, ::-1]
    for y in range(9):
        for x in range(11):
            expected[y, x] = (padded[y:y + 5, x:x + 3] * flipped).sum()
    np.testing.assert_allclose(optics.convolve_same(image, kernel), expected, atol=1e-12)


def test_rendering_non_negative_light_stays_non_negative():
    """FFT round-off must not leave negative light (the camera simulator rejects it)."""
    rng = np.random.default_rng(4)
    image = np.where(rng.random((64, 64)) < 0.5, 0.0, rng.random((64, 64)) * 2.0)
    coc = np.linspace(-14, 20, 64)[None, :] * np.ones((64, 1))
    for psf in (LensPSF(rim=0.7).kernel, optics.gaussian_psf_for_coc):
        assert optics.render_layered_defocus(image, coc, psf, num_layers=8).min() >= 0.0
