"""Display exposure (despike_basicsr.inference.display) and what despike-infer writes with it (issue 21, item 1)."""
import cv2
import numpy as np
import pytest

from despike_basicsr.inference.display import (FORMATS, KNEE, MID_GREY, auto_exposure_gain, expose, highlight_rolloff,
                                               parse_exposure, write_image)
from despike_basicsr.inference.infer import main
from despike_basicsr.spike import camera, optics
from despike_basicsr.spike.io import write_npz


def test_rolloff_is_the_identity_below_the_knee_continuous_monotone_and_never_reaches_white():
    d = np.linspace(0.0, 20.0, 20001, dtype=np.float32)
    y = highlight_rolloff(d)
    below = d <= KNEE
    np.testing.assert_array_equal(y[below], d[below])
    assert np.all(np.diff(y) >= 0)
    assert y.max() <= 1.0 and y[d <= 3.0].max() < 1.0  # exactly 1 only where float32 runs out of digits
    step = d[1] - d[0]
    assert np.max(np.abs(np.diff(y))) <= step * 1.0001  # slope at most 1: no jump at the knee


def test_auto_exposure_maps_the_median_to_mid_grey_and_ignores_hot_pixels():
    rng = np.random.default_rng(0)
    linear = rng.uniform(0.05, 0.6, (64, 64))
    linear[0, :8] = 1e6  # hot pixels
    gain = auto_exposure_gain(linear)
    assert np.median(linear * gain) == pytest.approx(MID_GREY, rel=1e-6)
    assert auto_exposure_gain(np.zeros((4, 4))) == 1.0
    assert auto_exposure_gain(np.full((4, 4), np.nan)) == 1.0


def test_expose_modes():
    display = np.array([[0.2, 0.5], [1.5, 3.0]], np.float32)
    shown, kept, gain = expose(display, 'fixed')
    np.testing.assert_array_equal(shown, np.clip(display, 0, 1))
    np.testing.assert_array_equal(kept, display)
    assert gain == 1.0
    shown, kept, gain = expose(display, 0.25)
    np.testing.assert_allclose(kept, display * 0.25**(1 / 2.2), rtol=1e-5)
    assert gain == 0.25 and shown.max() < 1.0
    _, _, gain = expose(display, 'auto')
    assert np.median(np.maximum(display, 0)**2.2 * gain) == pytest.approx(MID_GREY, rel=1e-5)
    for bad in ('bright', -1, 0, float('nan'), float('inf')):
        with pytest.raises(ValueError):
            parse_exposure(bad)
    assert parse_exposure('2.5') == 2.5


@pytest.mark.parametrize('fmt', sorted(FORMATS))
def test_write_image_formats_keep_what_they_promise(tmp_path, fmt):
    kept = np.array([[0.0, 0.5], [1.0, 2.75]], np.float32)
    shown = np.clip(highlight_rolloff(kept), 0, 1)
    path = str(tmp_path / f'x{FORMATS[fmt]}')
    write_image(path, shown, kept, fmt)
    if fmt == 'npy':
        np.testing.assert_array_equal(np.load(path), kept)
    elif fmt == 'tiff':
        np.testing.assert_array_equal(cv2.imread(path, cv2.IMREAD_UNCHANGED), kept)
    else:
        read = cv2.imread(path, cv2.IMREAD_UNCHANGED)
        top = 65535.0 if fmt == 'png16' else 255.0
        assert read.dtype == (np.uint16 if fmt == 'png16' else np.uint8)
        np.testing.assert_allclose(read / top, shown, atol=0.5 / top + 1e-7)
    with pytest.raises(ValueError):
        write_image(path, shown, kept, 'jpeg')


def _scene() -> np.ndarray:
    """A natural photograph (scikit-image's camera man) as linear intensity, 96x128, defocused a little."""
    from skimage import data
    image = cv2.resize(data.camera(), (128, 96), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
    return optics.gaussian_blur(optics.display_to_linear(image), 1.0).astype(np.float32)


def _record(path, linear: np.ndarray, mean_rate: float, seed: int) -> None:
    light = camera.light_for_mean_rate(linear, mean_rate, 1.0, 0.9)
    gain, dark = camera.sample_fpn(linear.shape, 0.05, 0.0, 0.0, seed=seed + 1)
    spikes = camera.simulate((linear * light).astype(np.float32), 192, threshold=1.0, eta=0.9, gain=gain, dark=dark,
                             shot_noise=500.0, seed=seed)
    write_npz(str(path), spikes)


def test_shipped_despike_auto_exposure_clips_no_more_than_the_scene_and_holds_brightness_over_light(tmp_path):
    """A bright recording (mean 0.3 spikes per step, θ 1, η 0.9: 3× the reference camera's exposure) and the same
    scene at 4× less light, through despike-infer with the shipped weights."""
    linear = _scene()
    truth = optics.linear_to_display(linear)
    truth_clipped = np.mean(np.round(truth * 255) >= 255)
    images = {}
    for name, rate in (('bright', 0.3), ('dim', 0.075)):
        _record(tmp_path / f'{name}.npz', linear, rate, seed=3)
        for exposure in ('auto', 'fixed'):
            out = tmp_path / f'{name}_{exposure}'
            assert main(['--input', str(tmp_path / f'{name}.npz'), '--exposure', exposure, '--tile', '0', '--quiet',
                         '--out', str(out)]) == 0
            images[name, exposure] = cv2.imread(str(out / 'despike' / f'{name}_t000096.png'), cv2.IMREAD_GRAYSCALE)
    clipped = {key: float(np.mean(img >= 255)) for key, img in images.items()}
    assert clipped['bright', 'auto'] <= truth_clipped + 0.01, clipped
    assert clipped['bright', 'fixed'] > truth_clipped + 0.05, clipped  # the problem the auto exposure solves
    means = {key: float(img.mean()) for key, img in images.items()}
    assert abs(means['dim', 'auto'] / means['bright', 'auto'] - 1.0) <= 0.05, means
    assert means['dim', 'fixed'] / means['bright', 'fixed'] < 0.8, means  # the fixed scale follows the light


def test_infer_formats_and_bad_exposure(tmp_path, capsys):
    linear = _scene()[:32, :48]
    _record(tmp_path / 'rec.npz', linear, 0.3, seed=5)
    base = ['--input', str(tmp_path / 'rec.npz'), '--tile', '0', '--quiet']
    assert main(base + ['--format', 'npy', '--out', str(tmp_path / 'npy')]) == 0
    assert main(base + ['--format', 'png16', '--out', str(tmp_path / 'p16')]) == 0
    kept = np.load(tmp_path / 'npy' / 'despike' / 'rec_t000096.npy')
    p16 = cv2.imread(str(tmp_path / 'p16' / 'despike' / 'rec_t000096.png'), cv2.IMREAD_UNCHANGED)
    assert kept.dtype == np.float32 and kept.shape == (32, 48) and p16.dtype == np.uint16
    np.testing.assert_allclose(p16 / 65535.0, np.clip(highlight_rolloff(kept), 0, 1), atol=1e-4)
    assert main(base + ['--exposure', 'loud', '--out', str(tmp_path / 'bad')]) == 2
    assert '--exposure' in capsys.readouterr().err
