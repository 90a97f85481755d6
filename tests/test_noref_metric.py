"""Tests of the no-reference metrics: RMS contrast and the single-channel NIQE wrapper around BasicSR's NIQE."""
import os

import cv2
import numpy as np
import pytest

# importing through the package applies despike_basicsr.compat before basicsr loads
from despike_basicsr.metrics.noref_metric import (METRIC_REGISTRY, calculate_niqe, calculate_niqe_gray,
                                                  calculate_rms_contrast, niqe_params_path)


def _scene(height=256, width=384, seed=0):
    """Piecewise-constant rectangles with a little noise: a structured gray image in [0, 1]."""
    rng = np.random.default_rng(seed)
    img = np.full((height, width), 0.5)
    for _ in range(60):
        y, x = rng.integers(0, height), rng.integers(0, width)
        h, w = rng.integers(5, 60, 2)
        img[y:y + h, x:x + w] = rng.random()
    return np.clip(img + 0.01 * rng.standard_normal(img.shape), 0, 1)


def test_both_metrics_are_registered():
    assert METRIC_REGISTRY.get('calculate_rms_contrast') is calculate_rms_contrast
    assert METRIC_REGISTRY.get('calculate_niqe_gray') is calculate_niqe_gray


def test_niqe_parameter_file_ships_with_basicsr():
    path = niqe_params_path()
    assert os.path.isfile(path), path
    params = np.load(path)
    assert params['mu_pris_param'].shape[-1] == 36
    assert params['cov_pris_param'].shape == (36, 36)


def test_rms_contrast_known_values():
    half = np.zeros((10, 20), np.uint8)
    half[:, 10:] = 255
    assert calculate_rms_contrast(half) == pytest.approx(0.5)
    assert calculate_rms_contrast(np.full((8, 8), 0.7)) == pytest.approx(0.0, abs=1e-12)
    ramp = np.linspace(0, 1, 1001)[None, :].repeat(3, 0)
    assert calculate_rms_contrast(ramp) == pytest.approx(np.sqrt(1 / 12), rel=1e-3)  # uniform on [0, 1]


def test_rms_contrast_scale_layout_and_crop():
    img = _scene()
    as_u8 = np.round(img * 255).astype(np.uint8)
    as_u16 = (as_u8.astype(np.uint16) * 257)
    ref = calculate_rms_contrast(as_u8)
    assert calculate_rms_contrast(as_u8.astype(np.float32) / 255) == pytest.approx(ref, rel=1e-6)
    assert calculate_rms_contrast(as_u16) == pytest.approx(ref, rel=1e-6)
    assert calculate_rms_contrast(as_u8.astype(np.float64), max_value=255) == pytest.approx(ref, rel=1e-6)
    assert calculate_rms_contrast(as_u8[..., None], input_order='HWC') == pytest.approx(ref)
    assert calculate_rms_contrast(as_u8[None], input_order='CHW') == pytest.approx(ref)
    # identical gray BGR channels convert back to the same gray image
    assert calculate_rms_contrast(np.repeat(as_u8[..., None], 3, 2)) == pytest.approx(ref, abs=2e-3)
    cropped = calculate_rms_contrast(as_u8, crop_border=20)
    assert cropped == pytest.approx(float(np.std(as_u8[20:-20, 20:-20] / 255.0)))
    # BasicSR passes the ground truth as img2; it is ignored
    assert calculate_rms_contrast(as_u8, img2=np.zeros_like(as_u8)) == ref


def test_blur_lowers_rms_contrast():
    img = _scene()
    values = [calculate_rms_contrast(cv2.GaussianBlur(img, (0, 0), s)) for s in (0.5, 2, 4, 8)]
    assert all(a > b for a, b in zip(values, values[1:])), values


def test_rms_contrast_rejects_bad_input():
    with pytest.raises(ValueError, match='expected a 2-D or 3-D image'):
        calculate_rms_contrast(np.zeros((2, 3, 4, 5)))
    with pytest.raises(ValueError, match='expected 1 or 3 channels'):
        calculate_rms_contrast(np.zeros((5, 5, 2)))
    with pytest.raises(TypeError, match='unsupported image dtype'):
        calculate_rms_contrast(np.zeros((5, 5), bool))
    with pytest.raises(ValueError, match='empty after cropping'):
        calculate_rms_contrast(np.zeros((5, 5)), crop_border=3)


def test_niqe_gray_matches_basicsr_on_uint8():
    as_u8 = np.round(_scene() * 255).astype(np.uint8)
    ref = calculate_niqe(as_u8, crop_border=0, input_order='HW')
    assert np.isfinite(ref)
    assert calculate_niqe_gray(as_u8) == pytest.approx(ref, rel=1e-9)
    # float [0, 1], (H, W, 1) and CHW layouts give the same score (BasicSR's own function fails on (H, W, 1) + 'y')
    assert calculate_niqe_gray(as_u8.astype(np.float32) / 255) == pytest.approx(ref, rel=1e-5)
    assert calculate_niqe_gray(as_u8[..., None]) == pytest.approx(ref, rel=1e-9)
    assert calculate_niqe_gray(as_u8[None], input_order='CHW') == pytest.approx(ref, rel=1e-9)
    cropped = calculate_niqe(as_u8[4:-4, 4:-4], crop_border=0, input_order='HW')
    assert calculate_niqe_gray(as_u8, crop_border=4) == pytest.approx(cropped, rel=1e-9)


def test_niqe_gray_scores_noise_worse_than_structure():
    rng = np.random.default_rng(3)
    scene = _scene()
    noisy = np.clip(scene + 0.3 * rng.standard_normal(scene.shape), 0, 1)
    assert calculate_niqe_gray(noisy) > calculate_niqe_gray(scene) + 5


def test_niqe_gray_small_and_flat_images():
    with pytest.raises(ValueError, match=r'at least two 96x96 blocks .* got an image of 100x100'):
        calculate_niqe_gray(np.zeros((100, 100), np.uint8))
    # two blocks are enough
    assert np.isfinite(calculate_niqe_gray(np.round(_scene(96, 192) * 255).astype(np.uint8)))
    assert np.isnan(calculate_niqe_gray(np.full((250, 400), 77, np.uint8)))
