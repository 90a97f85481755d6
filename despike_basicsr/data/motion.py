"""Moving scenes for training: a camera that pans, rolls and zooms, and a foreground layer with its own motion.

Spike cameras exist for fast scenes, and a long window smears what moves. A moving sample is a still picture (sharp,
or defocused before it moves) seen through a time-varying affine transform, step by step, with optionally one soft
elliptical layer cut from elsewhere in the picture that moves on its own path. Every transform is the identity at the
centre step ``T // 2``, so the ground truth is the sharp picture itself (with the layer where it is at that step).

Displacements are in pixels per spike-camera step; docs/data.md gives the defaults and why.
"""
import math
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Sequence, Tuple

import cv2
import numpy as np

#: Default motion ranges (every one is a key of the dataset's ``motion`` option).
DEFAULT_MOTION: Dict[str, Sequence[float]] = {
    'speed_range': (0.005, 0.3),  # camera pan, px per step (log-uniform)
    'roll_range': (0.0, 0.02),  # camera roll, degrees per step (either sign)
    'zoom_range': (0.0, 3e-4),  # relative scale change per step (either sign)
    'layer_probability': (0.5, ),  # share of moving samples with an independently moving layer
    'layer_speed_range': (0.02, 0.5),  # layer speed relative to the frame, px per step (log-uniform)
    'layer_radius_range': (10.0, 40.0),  # layer ellipse semi-axes, px
}
#: The largest displacement a sample may reach at its window's ends (it sets the margin rendered around the crop).
MAX_MARGIN = 48


@dataclass
class MotionPath:
    """One sample's motion: ``x_src = c + s(τ)·R(τ)·(x − c) + v·τ`` at step offset ``τ = t − T//2`` for the frame, and
    a layer translating by ``layer_velocity·τ`` within it."""

    velocity: Tuple[float, float]  # (vx, vy) px per step
    roll: float  # degrees per step
    zoom: float  # relative scale change per step
    layer: bool
    layer_velocity: Tuple[float, float]
    layer_radii: Tuple[float, float]
    layer_angle: float  # ellipse orientation, degrees
    layer_source: Tuple[float, float]  # where the layer's picture is cut from, relative to the frame's centre


def _log_uniform(rng: np.random.Generator, bounds: Sequence[float]) -> float:
    lo, hi = float(bounds[0]), float(bounds[1])
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi)))) if lo > 0 else float(rng.uniform(lo, hi))


def draw_motion(rng: np.random.Generator, ranges: Dict[str, Sequence[float]], size: int, half_span: int) -> MotionPath:
    """A random :class:`MotionPath` whose frame moves at most :data:`MAX_MARGIN` px over ``±half_span`` steps.

    Args:
        rng: Random generator.
        ranges: :data:`DEFAULT_MOTION`'s keys.
        size: Side of the square crop (px).
        half_span: Steps from the centre to the window's ends.
    """
    speed = _log_uniform(rng, ranges['speed_range'])
    roll = float(rng.uniform(*ranges['roll_range'])) * float(rng.choice([-1.0, 1.0]))
    zoom = float(rng.uniform(*ranges['zoom_range'])) * float(rng.choice([-1.0, 1.0]))
    corner = size / math.sqrt(2.0)
    reach = half_span * (speed + corner * (math.radians(abs(roll)) + abs(zoom)))
    if reach > MAX_MARGIN:  # keep the frame inside the rendered margin: slow everything down alike
        shrink = MAX_MARGIN / reach
        speed, roll, zoom = speed * shrink, roll * shrink, zoom * shrink
    angle = rng.uniform(0.0, 2.0 * math.pi)
    layer_angle = rng.uniform(0.0, 2.0 * math.pi)
    layer_speed = _log_uniform(rng, ranges['layer_speed_range'])
    radii = (float(rng.uniform(*ranges['layer_radius_range'])), float(rng.uniform(*ranges['layer_radius_range'])))
    source = rng.uniform(-size / 2, size / 2, size=2)
    return MotionPath(velocity=(speed * math.cos(angle), speed * math.sin(angle)), roll=roll, zoom=zoom,
                      layer=bool(rng.random() < float(ranges['layer_probability'][0])),
                      layer_velocity=(layer_speed * math.cos(layer_angle), layer_speed * math.sin(layer_angle)),
                      layer_radii=radii, layer_angle=float(rng.uniform(0.0, 180.0)),
                      layer_source=(float(source[0]), float(source[1])))


def frame_transform(path: MotionPath, offset: float, crop_size: int, canvas_size: int) -> np.ndarray:
    """The 2×3 affine map from crop pixels to canvas pixels at step offset ``τ``:
    ``x_src = C + s(τ)·R(τ)·(x − c) + v·τ``, ``s(τ) = (1 + zoom)^τ``, ``R(τ)`` a roll of ``roll·τ`` degrees, ``c`` the
    crop's centre and ``C`` the canvas's (the crop sits in the middle of the canvas at τ = 0).
    """
    theta = math.radians(path.roll * offset)
    scale = (1.0 + path.zoom)**offset
    a, b = scale * math.cos(theta), scale * math.sin(theta)
    c, big_c = (crop_size - 1) / 2.0, (canvas_size - 1) / 2.0
    vx, vy = path.velocity
    return np.array([[a, -b, big_c + vx * offset - (a - b) * c], [b, a, big_c + vy * offset - (a + b) * c]],
                    dtype=np.float64)


def _ellipse_mask(size: int, centre: Tuple[float, float], radii: Tuple[float, float], angle: float) -> np.ndarray:
    """A soft ellipse (1 inside, a 2-px ramp at the edge) on a ``size``² grid."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    t = math.radians(angle)
    dx, dy = xx - centre[0], yy - centre[1]
    u = (dx * math.cos(t) + dy * math.sin(t)) / radii[0]
    w = (-dx * math.sin(t) + dy * math.cos(t)) / radii[1]
    distance = (np.sqrt(u * u + w * w) - 1.0) * min(radii)  # roughly px outside the rim
    return np.clip(0.5 - distance / 2.0, 0.0, 1.0)


class MovingScene:
    """A still canvas seen through a :class:`MotionPath`: frames for the simulator and the ground truth.

    Args:
        canvas: ``(S + 2m, S + 2m)`` linear picture the camera sees (sharp or defocused), the crop in its middle.
        sharp_canvas: The same region sharp (for the ground truth).
        size: Crop side S.
        path: The motion.
        centre_step: The step at which every transform is the identity (``T // 2``).
    """

    def __init__(self, canvas: np.ndarray, sharp_canvas: np.ndarray, size: int, path: MotionPath,
                 centre_step: int) -> None:
        if canvas.shape != sharp_canvas.shape or canvas.shape[0] != canvas.shape[1] or canvas.shape[0] < size:
            raise ValueError(f'MovingScene: canvases must be equal squares at least {size} px, got {canvas.shape} '
                             f'and {sharp_canvas.shape}')
        self.canvas = canvas.astype(np.float32)
        self.sharp_canvas = sharp_canvas.astype(np.float32)
        self.size, self.path, self.centre_step = size, path, centre_step
        self.crop_origin = (canvas.shape[0] - size) / 2.0

    def _frame(self, picture: np.ndarray, offset: float) -> np.ndarray:
        matrix = frame_transform(self.path, offset, self.size, picture.shape[0])
        return cv2.warpAffine(picture, matrix.astype(np.float32), (self.size, self.size),
                              flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REFLECT)

    def _layer(self, picture: np.ndarray, offset: float) -> Tuple[np.ndarray, np.ndarray]:
        """The layer's picture and mask at step offset τ, in crop coordinates."""
        path = self.path
        lx, ly = path.layer_velocity
        centre = (self.size / 2.0 + lx * offset, self.size / 2.0 + ly * offset)
        mask = _ellipse_mask(self.size, centre, path.layer_radii, path.layer_angle)
        sx, sy = path.layer_source
        # the layer's picture is the canvas region around (centre + source offset), translated with the layer
        matrix = np.array([[1.0, 0.0, self.crop_origin + sx - lx * offset],
                           [0.0, 1.0, self.crop_origin + sy - ly * offset]], dtype=np.float32)
        layer = cv2.warpAffine(picture, matrix, (self.size, self.size), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                               borderMode=cv2.BORDER_REFLECT)
        return layer, mask

    def _composite(self, picture: np.ndarray, offset: float) -> np.ndarray:
        frame = self._frame(picture, offset)
        if self.path.layer:
            layer, mask = self._layer(picture, offset)
            frame = frame * (1.0 - mask) + layer * mask
        return frame

    def frames(self, steps: np.ndarray) -> np.ndarray:
        """``(len(steps), S, S)`` float32 linear frames the camera sees at the given steps."""
        return np.stack([self._composite(self.canvas, float(t) - self.centre_step) for t in np.asarray(steps)])

    def target(self) -> np.ndarray:
        """The sharp ``(S, S)`` picture at the centre step: the ground truth."""
        return self._composite(self.sharp_canvas, 0.0)

    def reference(self) -> np.ndarray:
        """The ``(S, S)`` picture the camera sees at the centre step (sets the light level)."""
        return self._composite(self.canvas, 0.0)

    def as_intensity(self) -> Callable[[np.ndarray], np.ndarray]:
        """The callable :func:`despike_basicsr.spike.camera.simulate` takes for time-varying light."""
        return self.frames


def motion_ranges(option: Optional[Dict[str, Sequence[float]]]) -> Dict[str, Sequence[float]]:
    """:data:`DEFAULT_MOTION` updated by the dataset's ``motion`` option, each range checked."""
    ranges = dict(DEFAULT_MOTION)
    for name, value in (option or {}).items():
        if name not in DEFAULT_MOTION:
            raise ValueError(f'motion: unknown key {name!r}; keys are {sorted(DEFAULT_MOTION)}')
        value = [float(v) for v in (value if isinstance(value, (list, tuple)) else [value])]
        if len(value) != len(DEFAULT_MOTION[name]) or min(value) < 0 or value != sorted(value):
            raise ValueError(f'motion: {name} must be {len(DEFAULT_MOTION[name])} non-negative number(s) in '
                             f'increasing order, got {value}')
        ranges[name] = value
    return ranges
