"""Procedural demo scenes: determinism, value ranges, variety of content and of defocus levels."""
import numpy as np
import pytest

from despike_basicsr.data.preparation import fit_thin_lens
from despike_basicsr.data.scenes import MIN_INTENSITY, SceneConfig, generate_scene


def test_same_seed_same_scene_other_seed_differs():
    first = generate_scene(64, 80, seed=11)
    again = generate_scene(64, 80, seed=11)
    other = generate_scene(64, 80, seed=12)
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    assert np.abs(first[0] - other[0]).mean() > 0.02


@pytest.mark.parametrize('seed', range(6))
def test_ranges_and_types(seed):
    intensity, depth = generate_scene(48, 40, seed)
    assert intensity.shape == depth.shape == (48, 40)
    assert intensity.dtype == depth.dtype == np.float32
    assert intensity.min() >= MIN_INTENSITY and intensity.max() <= 1.0
    near, far = SceneConfig().depth_range
    assert depth.min() >= near - 1e-6 and depth.max() <= far + 1e-6


def test_scenes_have_edges_texture_and_several_depths():
    for seed in range(8):
        intensity, depth = generate_scene(96, 96, seed)
        display = np.power(intensity, 1 / 2.2)
        gradient = np.hypot(*np.gradient(display))
        assert (gradient > 0.1).mean() > 0.02  # hard edges (shapes, strokes)
        assert display.std() > 0.08  # not a flat picture
        assert len(np.unique(np.round(depth, 2))) >= 3  # background plus objects at other depths


def test_depths_spread_the_demo_blur_over_its_range():
    lens = fit_thin_lens(*SceneConfig().depth_range, 1.0, 4.0)
    sigmas = np.concatenate([lens.sigma_px(generate_scene(64, 64, seed)[1]).ravel() for seed in range(20)])
    assert sigmas.min() >= 1.0 - 1e-6 and sigmas.max() <= 4.0 + 1e-6
    assert (sigmas < 2.0).mean() > 0.05 and (sigmas > 3.0).mean() > 0.2
    assert ((sigmas >= 2.0) & (sigmas <= 3.0)).mean() > 0.05


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match='at least 8x8 pixels, got 4x32'):
        generate_scene(4, 32, 0)
    with pytest.raises(ValueError, match=r'depth_range must satisfy 0 < near < far, got \(3.0, 1.0\)'):
        generate_scene(32, 32, 0, SceneConfig(depth_range=(3.0, 1.0)))
