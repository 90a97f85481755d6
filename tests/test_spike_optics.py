"""Thin-lens optics, PSF and defocus rendering."""
import numpy as np
import pytest
import torch

from despike_basicsr.spike.optics import (ThinLens, coc_diameter, coc_radius_px, coc_to_sigma, display_to_linear,
                                          gaussian_blur, gaussian_kernel, image_distance, linear_to_display,
                                          render_depth_defocus)


def test_image_distance_by_hand():
    # f = 50 mm, object at 2 m: 1/v = 1/0.05 - 1/2 = 19.5 -> v = 0.0512820...
    assert image_distance(2.0, 0.05) == pytest.approx(1 / 19.5, rel=1e-12)
    with pytest.raises(ValueError, match='exceed the focal length'):
        image_distance(0.04, 0.05)


def test_coc_worked_example():
    # f = 50 mm, N = 2 (D = 25 mm), focus 2 m, object 4 m:
    # c = D f |d - d_f| / (d (d_f - f)) = 0.025 * 0.05 * 2 / (4 * 1.95) = 0.0025 / 7.8 m
    c = coc_diameter(4.0, 2.0, 0.05, f_number=2.0)
    assert c == pytest.approx(0.0025 / 7.8, rel=1e-12)
    # the same from the image distances: c = D |v - v_f| / v with v = 0.2/3.95, v_f = 0.1/1.95
    v, v_f = 0.2 / 3.95, 0.1 / 1.95
    assert c == pytest.approx(0.025 * abs(v - v_f) / v, rel=1e-12)
    assert coc_diameter(4.0, 2.0, 0.05, aperture=0.025) == pytest.approx(c, rel=1e-12)
    # 20 µm pixels: diameter 16.03 px, radius 8.01 px, σ = (16.03 - 1) / 4
    assert coc_radius_px(4.0, 2.0, 0.05, 2.0, 20e-6) == pytest.approx(0.0025 / 7.8 / 2 / 20e-6, rel=1e-12)
    lens = ThinLens(focal_length=0.05, f_number=2.0, focus_distance=2.0, pixel_pitch=20e-6)
    assert lens.coc_px(4.0) == pytest.approx(0.0025 / 7.8 / 20e-6, rel=1e-12)
    assert lens.sigma_px(4.0) == pytest.approx((0.0025 / 7.8 / 20e-6 - 1) / 4, rel=1e-12)
    assert lens.coc_px(2.0) == 0 and lens.sigma_px(2.0) == 0
    # broadcasting, and front/back asymmetry: 1 m in front blurs more than 1 m behind
    c_front, c_back = coc_diameter(np.array([1.0, 3.0]), 2.0, 0.05, f_number=2.0)
    assert c_front > c_back > 0


def test_coc_argument_errors():
    with pytest.raises(ValueError, match='exactly one of f_number and aperture'):
        coc_diameter(3.0, 2.0, 0.05)
    with pytest.raises(ValueError, match='focus distance 0.04 must exceed the focal length'):
        coc_diameter(3.0, 0.04, 0.05, f_number=2)
    with pytest.raises(ValueError, match='f_number must be > 0'):
        ThinLens(0.05, 0.0, 2.0, 1e-5)


def test_sigma_rule_moment_matches_the_disc():
    # a uniform disc of diameter c has per-axis std c/4; the rule is σ = (c_px - 1)/4, so σ(c + 1) = std of disc c
    rng = np.random.default_rng(0)
    for c in (4.0, 10.0):
        radius = c / 2 * np.sqrt(rng.random(400000))
        angle = rng.random(400000) * 2 * np.pi
        std = np.std(radius * np.cos(angle))
        assert coc_to_sigma(c + 1) == pytest.approx(std, rel=0.01)
    np.testing.assert_array_equal(coc_to_sigma(np.array([0.0, 0.5, 1.0])), 0.0)  # at most one pixel: sharp


def test_gaussian_kernel():
    k = gaussian_kernel(2.0)
    assert k.shape == (13, 13) and k.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(k, k.T)
    np.testing.assert_allclose(k, k[::-1, ::-1])
    x = np.arange(-6, 7)
    assert np.sqrt((k.sum(0) * x**2).sum()) == pytest.approx(2.0, rel=0.02)  # truncation at 3σ trims ~1%
    delta = gaussian_kernel(0.0, radius=2)
    assert delta.shape == (5, 5) and delta[2, 2] == 1 and delta.sum() == 1


@pytest.mark.parametrize('sigma', [0.7, 3.3, 25.0])
def test_blur_preserves_mean(sigma):
    image = np.random.default_rng(1).random((37, 53))
    blurred = gaussian_blur(image, sigma)
    assert blurred.shape == image.shape
    assert blurred.mean() == pytest.approx(image.mean(), rel=1e-12)
    assert blurred.var() < image.var()
    np.testing.assert_allclose(gaussian_blur(np.full((9, 9), 0.3), sigma), 0.3)
    assert np.array_equal(gaussian_blur(image, 0), image)


def textured(shape, seed=0):
    return np.random.default_rng(seed).random(shape)


def test_depth_rendering_keeps_focus_sharp_and_orders_blur_by_coc():
    lens = ThinLens(focal_length=0.05, f_number=1.4, focus_distance=2.0, pixel_pitch=20e-6)
    depths = [2.0, 2.3, 2.8, 4.0]  # increasing CoC behind the focus plane
    cocs = [float(lens.coc_px(d)) for d in depths]
    assert cocs == sorted(cocs) and cocs[0] == 0
    width = 60
    image = textured((40, width * len(depths)))
    depth = np.repeat(np.repeat(np.array(depths)[None], 40, axis=0), width, axis=1)
    out = render_depth_defocus(image, depth, lens, num_layers=16)
    margin = int(np.ceil(3 * lens.sigma_px(depths[1]))) + 1  # the in-focus stripe borders the least blurred one
    np.testing.assert_allclose(out[:, :width - margin], image[:, :width - margin], atol=1e-12)
    roughness = []
    for i in range(len(depths)):
        stripe = slice(i * width + 20, (i + 1) * width - 20)
        roughness.append(np.abs(np.diff(out[10:-10, stripe], axis=1)).mean())
    assert roughness == sorted(roughness, reverse=True)
    assert roughness[-1] < 0.5 * roughness[1]


def test_depth_rendering_front_object_blurs_over_background():
    lens = ThinLens(focal_length=0.05, f_number=1.4, focus_distance=4.0, pixel_pitch=20e-6)
    image = np.zeros((41, 41))
    image[:, 20:] = 1.0  # bright half
    depth = np.full((41, 41), 4.0)  # sharp background
    depth[:, 20:] = 2.5  # bright half is a near object, σ = 3.15 px
    assert lens.sigma_px(2.5) == pytest.approx(3.15, abs=0.01)
    out = render_depth_defocus(image, depth, lens)
    assert out[20, 17] > 0.05  # the near object's blur spills over the in-focus background next to it
    assert out[20, 2] < 1e-6  # 18 px = 5.7σ away the background is untouched


def test_depth_rendering_is_energy_preserving_and_all_focus_is_identity():
    lens = ThinLens(focal_length=0.05, f_number=2.0, focus_distance=2.0, pixel_pitch=20e-6)
    depth = np.random.default_rng(2).uniform(1.0, 6.0, (30, 30))
    np.testing.assert_allclose(render_depth_defocus(np.full((30, 30), 0.4), depth, lens), 0.4, rtol=1e-9)
    image = textured((30, 30), 3)
    np.testing.assert_allclose(render_depth_defocus(image, np.full((30, 30), 2.0), lens), image, atol=1e-12)
    with pytest.raises(ValueError, match=r'one shape, found \(30, 30\) and \(3, 3\)'):
        render_depth_defocus(image, np.full((3, 3), 2.0), lens)


def test_gamma_round_trip_numpy_and_torch():
    x = np.linspace(0, 1, 11)
    np.testing.assert_allclose(display_to_linear(linear_to_display(x)), x, atol=1e-12)
    assert linear_to_display(0.5) == pytest.approx(0.5**(1 / 2.2))
    assert display_to_linear(1.5) == 1.0 and display_to_linear(-0.2) == 0.0
    t = torch.linspace(0, 1, 5)
    torch.testing.assert_close(display_to_linear(linear_to_display(t)), t)
