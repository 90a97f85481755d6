"""Procedural scenes for the built-in demo data set: no downloads, deterministic per seed.

A scene is a stack of fronto-parallel layers painted far to near (painter's algorithm): a textured background, then
shapes, textured patches, hard edges and text-like strokes, each at its own depth. Defocus rendering then needs nothing
more than the returned depth map, so the same scene gives sharp ground truth and a physically blurred input.

Reflectances are drawn in display-referred units (perceptually even contrast) and converted to linear intensity with
the same power-law gamma as the rest of the package, because the spike camera integrates linear light.
"""
from dataclasses import dataclass
from typing import Callable, List, Tuple

import cv2
import numpy as np

#: Gamma of the display <-> linear conversion (the package-wide plain power law).
DISPLAY_GAMMA = 2.2
#: Smallest linear intensity in a scene: keeps every pixel firing now and then, as real scenes do.
MIN_INTENSITY = 0.01
#: Supersampling factor used to anti-alias the hard edges of painted masks.
SUPERSAMPLE = 4


@dataclass
class SceneConfig:
    """How scenes are drawn.

    Attributes:
        depth_range: Nearest and farthest depth in meters.
        num_objects: Inclusive range of the number of foreground objects.
        text_probability: Probability that an object is a sign carrying text-like strokes.
        brightness_range: Range of the global illumination factor applied to the whole scene (linear).
    """

    depth_range: Tuple[float, float] = (0.8, 6.0)
    num_objects: Tuple[int, int] = (5, 10)
    text_probability: float = 0.35
    brightness_range: Tuple[float, float] = (0.55, 1.0)


def _smooth_noise(rng: np.random.Generator, height: int, width: int, octaves: int = 4) -> np.ndarray:
    """Multi-octave value noise in [0, 1]: a cheap natural-looking texture."""
    total = np.zeros((height, width), np.float32)
    weight_sum = 0.0
    for octave in range(octaves):
        cells = 2**(octave + 2)
        grid = rng.random((cells + 1, cells + 1)).astype(np.float32)
        total += cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC) / (2**octave)
        weight_sum += 1.0 / (2**octave)
    total /= weight_sum
    lo, hi = float(total.min()), float(total.max())
    return (total - lo) / max(hi - lo, 1e-6)


def _texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A random texture in display units [0, 1]: flat, gradient, noise, stripes or checkerboard."""
    kind = rng.integers(5)
    base, contrast = rng.uniform(0.15, 0.85), rng.uniform(0.2, 0.7)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, np.pi)
    along = xx * np.cos(angle) + yy * np.sin(angle)
    if kind == 0:
        pattern = np.zeros((height, width), np.float32)
    elif kind == 1:
        pattern = along / max(height, width) - 0.5
    elif kind == 2:
        pattern = _smooth_noise(rng, height, width) - 0.5
    elif kind == 3:
        period = rng.uniform(4, 16)
        pattern = 0.5 * np.sign(np.sin(2 * np.pi * along / period))
    else:
        period = rng.uniform(5, 18)
        across = -xx * np.sin(angle) + yy * np.cos(angle)
        pattern = 0.5 * np.sign(np.sin(np.pi * along / period) * np.sin(np.pi * across / period))
    return np.clip(base + contrast * pattern, 0.0, 1.0).astype(np.float32)


def _mask_from_drawing(height: int, width: int, draw: Callable[[np.ndarray, int], None]) -> np.ndarray:
    """Rasterise a shape at SUPERSAMPLE× resolution and average down, giving an anti-aliased alpha in [0, 1]."""
    canvas = np.zeros((height * SUPERSAMPLE, width * SUPERSAMPLE), np.uint8)
    draw(canvas, SUPERSAMPLE)
    return cv2.resize(canvas.astype(np.float32) / 255.0, (width, height), interpolation=cv2.INTER_AREA)


def _random_shape_mask(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Alpha mask of a disk, ellipse, rotated rectangle, polygon or ring at a random place and size."""
    size = min(height, width)
    center = (rng.uniform(0, width), rng.uniform(0, height))
    radius = rng.uniform(0.08, 0.35) * size
    kind = rng.integers(5)

    def draw(canvas: np.ndarray, ss: int) -> None:
        cx, cy, r = int(center[0] * ss), int(center[1] * ss), max(int(radius * ss), 1)
        if kind == 0:
            cv2.circle(canvas, (cx, cy), r, 255, -1)
        elif kind == 1:
            axes = (r, max(int(r * rng.uniform(0.3, 1.0)), 1))
            cv2.ellipse(canvas, (cx, cy), axes, float(rng.uniform(0, 180)), 0, 360, 255, -1)
        elif kind == 2:
            box = ((cx, cy), (2 * r, 2 * r * rng.uniform(0.3, 1.0)), float(rng.uniform(0, 180)))
            cv2.fillPoly(canvas, [cv2.boxPoints(box).astype(np.int32)], 255)
        elif kind == 3:
            count = int(rng.integers(3, 8))
            angles = np.sort(rng.uniform(0, 2 * np.pi, count))
            radii = r * rng.uniform(0.5, 1.0, count)
            points = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], axis=1)
            cv2.fillPoly(canvas, [points.astype(np.int32)], 255)
        else:
            cv2.circle(canvas, (cx, cy), r, 255, max(int(r * rng.uniform(0.15, 0.5)), ss))

    return _mask_from_drawing(height, width, draw)


def _text_strokes_mask(rng: np.random.Generator, height: int, width: int,
                       box: Tuple[int, int, int, int]) -> np.ndarray:
    """Alpha mask of text-like strokes inside ``box`` (x0, y0, x1, y1): Hershey glyphs and random pen strokes."""
    x0, y0, x1, y1 = box
    letters = 'ABCDEFGHJKLMNPRSTUVWXYZ0123456789'

    def draw(canvas: np.ndarray, ss: int) -> None:
        line_height = rng.uniform(6, 14)
        y = y0 + line_height * 1.2
        while y < y1:
            x = x0 + rng.uniform(1, 4)
            while x < x1 - line_height:
                thickness = max(int(round(rng.uniform(0.8, 2.0) * ss)), 1)
                if rng.random() < 0.6:
                    scale = line_height * ss / 22.0
                    glyph = letters[rng.integers(len(letters))]
                    cv2.putText(canvas, glyph, (int(x * ss), int(y * ss)), cv2.FONT_HERSHEY_SIMPLEX, scale, 255,
                                thickness, cv2.LINE_8)
                else:
                    count = int(rng.integers(2, 5))
                    points = np.stack([x + rng.uniform(0, line_height * 0.7, count),
                                       y - rng.uniform(0, line_height, count)], axis=1)
                    cv2.polylines(canvas, [(points * ss).astype(np.int32)], False, 255, thickness)
                x += line_height * rng.uniform(0.7, 1.1)
            y += line_height * rng.uniform(1.3, 1.8)

    return _mask_from_drawing(height, width, draw)


def _composite(intensity: np.ndarray, depth: np.ndarray, alpha: np.ndarray, layer: np.ndarray,
               layer_depth: float) -> None:
    """Paint ``layer`` over the scene in place; depth takes the layer's value where it covers most of a pixel."""
    intensity *= 1.0 - alpha
    intensity += alpha * layer
    depth[alpha >= 0.5] = layer_depth


def generate_scene(height: int, width: int, seed: int, config: SceneConfig = None) -> Tuple[np.ndarray, np.ndarray]:
    """Draw one procedural scene.

    Args:
        height: Image height in pixels.
        width: Image width in pixels.
        seed: Seed; the same seed (and config) always gives the same scene.
        config: Drawing options; defaults to :class:`SceneConfig`.

    Returns:
        ``(intensity, depth)``: the sharp linear intensity (H, W) float32 in [MIN_INTENSITY, 1] and the depth map
        (H, W) float32 in meters, within ``config.depth_range``.

    Raises:
        ValueError: If the size is not positive or the depth range is not increasing and positive.
    """
    config = config or SceneConfig()
    if height < 8 or width < 8:
        raise ValueError(f'scene size must be at least 8x8 pixels, got {height}x{width}')
    near, far = config.depth_range
    if not 0 < near < far:
        raise ValueError(f'depth_range must satisfy 0 < near < far, got {config.depth_range}')
    rng = np.random.default_rng(seed)

    # Background: a textured wall at the far end, sometimes slanted (a depth ramp) like a floor or a side wall.
    display = _texture(rng, height, width)
    depth = np.full((height, width), far, np.float32)
    if rng.random() < 0.5:
        ramp_near = rng.uniform(near + 0.5 * (far - near), far)
        ramp = np.linspace(ramp_near, far, height if rng.random() < 0.5 else width, dtype=np.float32)
        depth = np.broadcast_to(ramp[:, None] if ramp.size == height else ramp[None, :], (height, width)).copy()

    # Objects are drawn far to near so nearer ones occlude farther ones. Depths are uniform in inverse depth: the CoC
    # is linear in 1/d, so the blur levels spread evenly instead of crowding at the far end.
    count = int(rng.integers(config.num_objects[0], config.num_objects[1] + 1))
    object_depths: List[float] = sorted((1.0 / rng.uniform(1.0 / far, 1.0 / near, count)).tolist(), reverse=True)
    for object_depth in object_depths:
        layer = _texture(rng, height, width)
        if rng.random() < config.text_probability:
            bw, bh = int(rng.uniform(0.3, 0.7) * width), int(rng.uniform(0.2, 0.5) * height)
            bx, by = int(rng.uniform(0, width - bw)), int(rng.uniform(0, height - bh))
            board = np.zeros((height, width), np.float32)
            board[by:by + bh, bx:bx + bw] = 1.0
            ink = _text_strokes_mask(rng, height, width, (bx, by, bx + bw, by + bh))
            paper, ink_level = rng.uniform(0.6, 0.95), rng.uniform(0.02, 0.3)
            if rng.random() < 0.3:  # dark signs with light letters exist too
                paper, ink_level = ink_level, paper
            _composite(display, depth, board, np.full_like(board, paper), object_depth)
            _composite(display, depth, ink, np.full_like(ink, ink_level), object_depth)
        else:
            _composite(display, depth, _random_shape_mask(rng, height, width), layer, object_depth)

    brightness = rng.uniform(*config.brightness_range)
    intensity = np.power(np.clip(display, 0.0, 1.0), DISPLAY_GAMMA) * brightness
    intensity = np.clip(intensity, MIN_INTENSITY, 1.0).astype(np.float32)
    return intensity, depth.astype(np.float32)


def synthetic_depth_map(height: int,
                        width: int,
                        rng: np.random.Generator,
                        depth_range: Tuple[float, float] = (1.0, 8.0),
                        max_objects: int = 3) -> np.ndarray:
    """A plausible random depth map for a natural photograph that has none (meters).

    A ground-plane ramp (depth growing towards the top of the frame, at a random tilt) plus low-frequency noise gives
    smooth depth variation; up to ``max_objects`` elliptic objects at their own nearer depth give occlusion edges.
    Depth is log-spaced over ``depth_range``, as distances in real scenes are.

    Args:
        height: Rows.
        width: Columns.
        rng: Random generator (the map is a deterministic function of its state).
        depth_range: Nearest and farthest depth in meters.
        max_objects: Largest number of foreground objects.

    Returns:
        ``(height, width)`` float32 depth in meters.
    """
    near, far = depth_range
    if not 0 < near < far:
        raise ValueError(f'synthetic_depth_map: need 0 < near < far, got {depth_range}')
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(-0.6, 0.6)
    ramp = (np.cos(angle) * (height - 1 - yy) / max(height - 1, 1) + np.sin(angle) * (xx / max(width - 1, 1) - 0.5))
    position = rng.uniform(0.3, 1.0) * ramp + rng.uniform(0.2, 0.7) * _smooth_noise(rng, height, width, octaves=2)
    position = (position - position.min()) / max(float(np.ptp(position)), 1e-6)
    for _ in range(int(rng.integers(0, max_objects + 1))):
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        ry, rx = rng.uniform(0.1, 0.4) * height, rng.uniform(0.1, 0.4) * width
        inside = ((yy - cy) / ry)**2 + ((xx - cx) / rx)**2 <= 1.0
        position[inside] = np.minimum(position[inside], rng.uniform(0.0, 0.5))
    return (near * (far / near)**position).astype(np.float32)
