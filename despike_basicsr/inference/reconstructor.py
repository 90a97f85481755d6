"""DeSpikeReconstructor: a sharp image from a spike stream in a few lines of Python (the library behind despike-infer).

Example::

    from despike_basicsr.inference import DeSpikeReconstructor
    from despike_basicsr.spike.io import load_spikes

    spikes = load_spikes('rec.dat', height=250, width=400)          # (T, H, W) uint8
    reconstructor = DeSpikeReconstructor()                           # the shipped pretrained weights, CPU or CUDA
    image = reconstructor.reconstruct(spikes)                        # (H, W) float32 in [0, 1], frame T // 2

By default the frame is auto-exposed (:mod:`despike_basicsr.inference.display`): the same scene shows at the same
brightness at any light level and highlights roll off instead of clipping; ``exposure='fixed'`` gives the reference
camera's scale.

``weights`` takes any checkpoint this project trained (it stores the ``network_g`` options that built it); other
checkpoints need ``network_opt`` (a ``network_g`` dict) or ``opt_path`` (an options file), unless they lie in a BasicSR
experiment folder that holds the options file they were trained with
(:func:`~despike_basicsr.inference.network.resolve_network_options` has the one order every caller uses). Large frames
run tile by tile (``tile``); the exposure level of an exposure-normalised network is measured on the whole frame
first, so the tiles agree on one display scale.

``despike-infer`` (:mod:`despike_basicsr.inference.infer`) is the command line over this module; loading and tiling live
in :mod:`despike_basicsr.inference.network`, which the defocus map, ``despike-export`` and the benchmarks share.
"""
import os.path as osp
from typing import Any, Callable, Dict, Optional, Union

import numpy as np
import torch

from despike_basicsr.inference.defocus_map import DEFOCUS_WEIGHTS, DefocusMapEstimator
from despike_basicsr.inference.display import Exposure, expose, parse_exposure
from despike_basicsr.inference.network import (PRETRAINED_WEIGHTS, ReconstructorError, load_network,
                                               reconstruct_tiled, select_device)

Array = Union[np.ndarray, torch.Tensor]


class DeSpikeReconstructor:
    """Reconstruct sharp frames from ``(T, H, W)`` spike streams with a trained network.

    Args:
        weights: Checkpoint path; ``None`` takes the shipped pretrained weights (:data:`PRETRAINED_WEIGHTS`).
        network_opt: ``network_g`` options that built the weights (default: stored in the checkpoint).
        opt_path: Options file to take ``network_g`` from instead.
        param_key: Checkpoint key of the weights (default ``params_ema``, else ``params``).
        device: ``cpu``, ``cuda``, ... (default CUDA when available).
        tile: Tile size in pixels for large frames (0: the whole frame at once).
        tile_overlap: Overlap of neighbouring tiles in pixels.
        fallback_opt_path: Options file for a checkpoint that nothing else names the network of
            (:func:`~.network.resolve_network_options`; ``despike-infer`` passes :data:`~.network.DEFAULT_OPT`).
        correction_strength: α in [0, 2], how much of the learned correction to apply on top of the mix of plain
            reconstructions (:func:`~despike_basicsr.archs.despike_arch.gated_plain_reconstruction`): 1 as trained,
            0 the mix alone (in focus at least as good as TFP-192, but defocus stays). Only for networks with
            ``base_windows``.
        correction_threshold: τ ≥ 0, the dead zone of the correction in 8-bit grey levels
            (:func:`~despike_basicsr.archs.despike_arch.correction_dead_zone`: smaller corrections are dropped);
            ``None`` (default) keeps the network's own (``network_g``'s ``correction_threshold``, 0 when absent).
    """

    def __init__(self,
                 weights: Optional[str] = None,
                 network_opt: Optional[Dict[str, Any]] = None,
                 opt_path: Optional[str] = None,
                 param_key: Optional[str] = None,
                 device: Optional[str] = None,
                 tile: int = 0,
                 tile_overlap: int = 32,
                 fallback_opt_path: Optional[str] = None,
                 correction_strength: float = 1.0,
                 correction_threshold: Optional[float] = None) -> None:
        if tile < 0 or tile_overlap < 0 or (tile and tile_overlap >= tile):
            raise ReconstructorError(f'tile ({tile}) and tile_overlap ({tile_overlap}) must be >= 0, with the '
                                     'overlap smaller than the tile')
        self.weights = weights or PRETRAINED_WEIGHTS
        if weights is None and not osp.isfile(self.weights):
            raise ReconstructorError(f'{self.weights}: the pretrained weights are missing from this installation; '
                                     'pass weights= (or --weights)')
        self.device = select_device(device)
        self.net, self.network_opt, self.network_source = load_network(self.weights, network_opt, opt_path, param_key,
                                                                       self.device, fallback_opt_path)
        self.tile, self.tile_overlap = tile, tile_overlap
        self.set_correction_strength(correction_strength)
        if correction_threshold is not None:
            self.set_correction_threshold(correction_threshold)

    def set_correction_strength(self, strength: float) -> None:
        """Scale the learned correction by ``strength`` (see the class arguments)."""
        strength = float(strength)
        if not 0.0 <= strength <= 2.0:  # also rejects NaN
            raise ReconstructorError(f'correction strength must be in [0, 2], got {strength}')
        if not getattr(self.net, 'base_windows', None):
            if strength != 1.0:
                raise ReconstructorError(f'{self.weights}: this network predicts the image directly (no base_windows),'
                                         ' so it has no correction to scale; leave the correction strength at 1')
            return
        self.net.correction_strength = strength

    def set_correction_threshold(self, threshold: float) -> None:
        """Drop corrections smaller than ``threshold`` grey levels (see the class arguments)."""
        threshold = float(threshold)
        if not 0.0 <= threshold <= 255.0:  # also rejects NaN
            raise ReconstructorError(f'correction threshold must be in [0, 255] grey levels, got {threshold}')
        if not getattr(self.net, 'base_windows', None):
            if threshold != 0.0:
                raise ReconstructorError(f'{self.weights}: this network predicts the image directly (no base_windows),'
                                         ' so it has no correction to threshold; leave the correction threshold at 0')
            return
        self.net.correction_threshold = threshold

    @property
    def min_stream_len(self) -> int:
        """Shortest stream the network accepts (DeSpikeNet: 8 steps, or its smallest window if shorter)."""
        return int(getattr(self.net, 'min_stream_len', 1))

    @property
    def frames_needed(self) -> int:
        """Frames around the target the network reads (its longest window)."""
        return int(getattr(self.net, 'frames_needed', self.min_stream_len))

    @torch.inference_mode()
    def reconstruct_window(self,
                           window: torch.Tensor,
                           gamma: Optional[torch.Tensor] = None,
                           progress: Optional[Callable[[int], Any]] = None) -> torch.Tensor:
        """The network's image of exactly ``window``: the middle frame of a ``(1, T, H, W)`` 0/1 stream.

        The caller chose the frames (``despike-infer`` reads them window by window from a file); tiles as set up.

        Args:
            window: ``(1, T, H, W)`` spikes (any dtype; uint8 keeps the copies small).
            gamma: ``(1, 1, H, W)`` FPN correction γ, or ``None``.
            progress: Called with 1 after every tile.

        Returns:
            ``(1, 1, H, W)`` display-referred image on :attr:`device`, not clipped.
        """
        return reconstruct_tiled(self.net, window, gamma, self.tile, self.tile_overlap, self.device, progress)

    @torch.inference_mode()
    def reconstruct(self,
                    spikes: Array,
                    gamma: Optional[Array] = None,
                    centre: Optional[int] = None,
                    clip: bool = True,
                    exposure: Exposure = 'auto') -> np.ndarray:
        """The sharp frame at ``centre`` (default ``T // 2``) of one stream.

        Args:
            spikes: ``(T, H, W)`` 0/1 stream (numpy or torch, any integer or bool dtype).
            gamma: ``(H, W)`` FPN correction γ (``spike.fpn``), or ``None``.
            centre: Target frame; the network reads :attr:`frames_needed` frames centred on it (fewer near the ends
                of the stream).
            clip: Return the image ready to show, in [0, 1] (rolled off, :func:`~.display.expose`);
                False returns the float display values after the exposure gain alone, nothing compressed or clipped.
            exposure: ``'auto'`` (default: the frame's median brought to mid-grey, highlights rolled off),
                ``'fixed'`` (the reference camera's scale: an exposure-normalised network shows a brightly lit scene
                as that camera would, which can exceed 1; ``scripts/evaluate_heldout.py`` uses it unclipped) or a
                linear gain on that scale.

        Returns:
            ``(H, W)`` float32 display-referred image, in [0, 1] when ``clip``.
        """
        stream = torch.as_tensor(np.asarray(spikes) if not torch.is_tensor(spikes) else spikes)
        if stream.dim() != 3:
            raise ReconstructorError(f'spikes must be shaped (T, H, W), got {tuple(stream.shape)}')
        length, height, width = stream.shape
        centre = length // 2 if centre is None else int(centre)
        if not 0 <= centre < length:
            raise ReconstructorError(f'centre {centre} is outside the stream of {length} frames')
        # the network reconstructs the middle frame of what it reads: a window centred on `centre`, shortened
        # symmetrically near the ends of the stream
        half = min(self.frames_needed // 2, centre, length - centre)
        window = stream[centre - half:centre + half]
        if window.shape[0] < self.min_stream_len:
            raise ReconstructorError(f'frame {centre} of a {length}-frame stream leaves {window.shape[0]} frames '
                                     f'centred on it; the network needs at least {self.min_stream_len}')
        window = window.to(torch.uint8)[None]
        gamma_map = None
        if gamma is not None:
            gamma_map = torch.as_tensor(np.asarray(gamma, dtype=np.float32)).to(self.device)
            if gamma_map.shape != (height, width):
                raise ReconstructorError(f'gamma must be shaped ({height}, {width}), got {tuple(gamma_map.shape)}')
            gamma_map = gamma_map[None, None]
        exposure = parse_exposure(exposure)
        image = self.reconstruct_window(window, gamma_map)[0, 0].float().cpu().numpy()
        shown, kept, _ = expose(image, exposure)
        return shown if clip else kept

    def defocus_map(self,
                    spikes: Array,
                    gamma: Optional[Array] = None,
                    centre: Optional[int] = None,
                    weights: Optional[str] = None) -> np.ndarray:
        """How defocused each pixel is at ``centre``: ``(H, W)`` float32 Gaussian σ in pixels.

        A separate network (:class:`~despike_basicsr.inference.defocus_map.DefocusMapEstimator`, the shipped
        ``weights/defocus_map.pth`` unless ``weights`` names another) reads the same stream, on this reconstructor's
        device and tiles; the reconstructed image does not depend on it.
        """
        estimator = getattr(self, '_defocus_estimator', None)
        if estimator is None or estimator.weights != (weights or DEFOCUS_WEIGHTS):
            estimator = DefocusMapEstimator(weights, self.device, self.tile, self.tile_overlap)
            self._defocus_estimator = estimator
        return estimator.estimate(spikes, gamma, centre)
