"""Per-pixel defocus maps: how blurred each point of a spike recording was, as a Gaussian σ in image pixels.

Example::

    from despike_basicsr.inference.defocus_map import DefocusMapEstimator, write_defocus_map

    estimator = DefocusMapEstimator()                  # the shipped weights (despike_basicsr/weights/defocus_map.pth)
    sigma = estimator.estimate(spikes)                 # (H, W) float32 σ in pixels at frame T // 2
    write_defocus_map('out/defocus/rec_t000100', sigma)  # .npy + colour-mapped .png with a colour bar

The estimator is :class:`~despike_basicsr.archs.defocus_map_arch.DefocusMapNet`, a network of its own that reads the
spike stream (not DeSpike's features), so the reconstructed image is the same with or without the map.
``DeSpikeReconstructor.defocus_map`` and ``despike-infer --defocus-map`` use this module; docs/inference.md shows a map
and docs/pretrained.md ("Defocus map") how it was trained and how well it ranks and measures σ on held-out scenes.
"""
import os
import os.path as osp
from typing import Any, Callable, Optional, Union

import cv2
import numpy as np
import torch

from despike_basicsr.inference.network import (PACKAGE_DIR, ReconstructorError, load_network, reconstruct_tiled,
                                               select_device)

#: The shipped defocus-map network (it stores its ``network_g``).
DEFOCUS_WEIGHTS = osp.join(PACKAGE_DIR, 'weights', 'defocus_map.pth')
#: Smallest top of the colour scale (px): maps of one recording share it unless a map blurs more.
COLOUR_SCALE_MIN_TOP = 4.0

Array = Union[np.ndarray, torch.Tensor]


class DefocusMapEstimator:
    """Load a defocus-map network and run it on spike streams, whole or tile by tile.

    Args:
        weights: Checkpoint storing ``network_g`` (default :data:`DEFOCUS_WEIGHTS`).
        device: ``cpu``, ``cuda``, ... (default CUDA when available).
        tile: Tile size in pixels for large frames (0: the whole frame).
        tile_overlap: Overlap of neighbouring tiles in pixels.
    """

    def __init__(self, weights: Optional[str] = None, device: Optional[Union[str, torch.device]] = None,
                 tile: int = 0, tile_overlap: int = 32) -> None:
        self.weights = weights or DEFOCUS_WEIGHTS
        if not osp.isfile(self.weights):
            raise ReconstructorError(f'{self.weights}: no defocus-map weights file')
        self.device = device if isinstance(device, torch.device) else select_device(device)
        self.net, self.network_opt, _ = load_network(self.weights, device=self.device)
        self.tile, self.tile_overlap = tile, tile_overlap

    @property
    def frames_needed(self) -> int:
        """Frames around the target the network reads (its longest window)."""
        return int(getattr(self.net, 'frames_needed', 1))

    @torch.inference_mode()
    def estimate_window(self, window: torch.Tensor, gamma: Optional[torch.Tensor] = None,
                        progress: Optional[Callable[[int], Any]] = None) -> np.ndarray:
        """σ map of the middle frame of a ``(1, T, H, W)`` window (``gamma``: ``(1, 1, H, W)`` or ``None``)."""
        sigma = reconstruct_tiled(self.net, window, gamma, self.tile, self.tile_overlap, self.device, progress)
        return sigma[0, 0].float().cpu().numpy().astype(np.float32)

    def estimate(self, spikes: Array, gamma: Optional[Array] = None, centre: Optional[int] = None) -> np.ndarray:
        """``(H, W)`` float32 σ (pixels) at frame ``centre`` (default ``T // 2``) of a ``(T, H, W)`` 0/1 stream.

        The network reads :attr:`frames_needed` frames centred on ``centre`` (fewer near the ends of the stream);
        ``gamma`` is the ``(H, W)`` FPN correction or ``None``.
        """
        stream = torch.as_tensor(np.asarray(spikes) if not torch.is_tensor(spikes) else spikes)
        if stream.dim() != 3:
            raise ReconstructorError(f'spikes must be shaped (T, H, W), got {tuple(stream.shape)}')
        length = stream.shape[0]
        centre = length // 2 if centre is None else int(centre)
        if not 0 <= centre < length:
            raise ReconstructorError(f'centre {centre} is outside the stream of {length} frames')
        half = max(min(self.frames_needed // 2, centre, length - centre), 1)
        window = stream[max(centre - half, 0):centre + half].to(torch.uint8)[None]
        gamma_map = None
        if gamma is not None:
            gamma_map = torch.as_tensor(np.asarray(gamma, dtype=np.float32))
            if gamma_map.shape != stream.shape[1:]:
                raise ReconstructorError(f'gamma must be shaped {tuple(stream.shape[1:])}, '
                                         f'got {tuple(gamma_map.shape)}')
            gamma_map = gamma_map[None, None]
        return self.estimate_window(window, gamma_map)


def colour_scale_top(sigma: np.ndarray) -> float:
    """Top of the colour scale: :data:`COLOUR_SCALE_MIN_TOP`, or the map's 99.5th percentile rounded up to a pixel."""
    return float(max(COLOUR_SCALE_MIN_TOP, np.ceil(np.percentile(sigma, 99.5))))


def colour_map_image(sigma: np.ndarray, top: Optional[float] = None, bar_width: int = 56) -> np.ndarray:
    """BGR uint8 picture of a σ map (viridis, 0 to ``top`` px) with a labelled colour bar on its right."""
    sigma = np.asarray(sigma, dtype=np.float32)
    top = colour_scale_top(sigma) if top is None else float(top)
    height = sigma.shape[0]
    coloured = cv2.applyColorMap(np.round(np.clip(sigma / top, 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_VIRIDIS)
    bar_h, top_pad, bottom_pad = max(height, 64), 18, 6
    ramp = np.linspace(255, 0, bar_h - top_pad - bottom_pad).astype(np.uint8)[:, None].repeat(12, axis=1)
    bar = np.full((bar_h, bar_width, 3), 255, np.uint8)
    bar[top_pad:bar_h - bottom_pad, 4:16] = cv2.applyColorMap(ramp, cv2.COLORMAP_VIRIDIS)
    cv2.putText(bar, 'px', (4, 11), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (0, 0, 0), 1, cv2.LINE_AA)
    for value in np.linspace(0.0, top, 5):
        y = int(round(top_pad + (bar_h - top_pad - bottom_pad - 1) * (1.0 - value / top)))
        cv2.line(bar, (16, y), (20, y), (0, 0, 0), 1)
        cv2.putText(bar, f'{value:g}', (22, y + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.33, (0, 0, 0), 1, cv2.LINE_AA)
    if bar_h > height:
        coloured = np.concatenate([coloured, np.full((bar_h - height, coloured.shape[1], 3), 255, np.uint8)])
    return np.concatenate([coloured, bar], axis=1)


def write_defocus_map(stem_path: str, sigma: np.ndarray, top: Optional[float] = None) -> None:
    """``<stem_path>.npy`` (float32 H×W σ in pixels) and ``<stem_path>.png`` (colour-mapped, with a colour bar)."""
    os.makedirs(osp.dirname(stem_path) or '.', exist_ok=True)
    np.save(stem_path + '.npy', np.asarray(sigma, dtype=np.float32))
    if not cv2.imwrite(stem_path + '.png', colour_map_image(sigma, top)):
        raise OSError(f'{stem_path}.png: OpenCV could not write the colour-mapped defocus map')
