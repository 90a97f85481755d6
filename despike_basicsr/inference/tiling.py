"""Run an image-to-image network over large frames tile by tile, blending the overlaps.

A 1000×1000 spike stream of 192 steps is 768 MB as float32 before the network has allocated a single feature map, so
:func:`tiled_apply` cuts the frame into overlapping windows, runs the network on one window at a time and blends the
results with weights that ramp linearly across every overlap. Dividing by the accumulated weights makes the blend a
convex combination, so a network that is the identity reproduces its input exactly whatever the tile layout.

Only the spatial crop, the (optional) padding to a size multiple and the accumulation buffers live at full size; the
network sees ``tile × tile`` inputs, so its peak memory is bounded by the tile size, not by the frame.
"""
from typing import Callable, List, Optional, Sequence, Tuple

import torch

__all__ = ['tile_starts', 'blend_weights', 'reflect_pad_to_multiple', 'tiled_apply', 'count_tiles']


def tile_starts(length: int, tile: int, overlap: int) -> List[int]:
    """Start offsets of windows of size ``tile`` that cover ``[0, length)`` with at least ``overlap`` in common.

    Windows advance by ``tile - overlap``; the last one is moved back to end exactly at ``length`` (so it may overlap
    its neighbour by more than ``overlap``). A length that fits in one tile gives the single start 0.

    Args:
        length: Size of the axis to cover, >= 1.
        tile: Window size, >= 1.
        overlap: Minimum overlap between neighbours, 0 <= overlap < tile.

    Returns:
        Sorted, distinct start offsets.
    """
    if length < 1 or tile < 1:
        raise ValueError(f'tile_starts: length and tile must be >= 1, got length={length}, tile={tile}')
    if not 0 <= overlap < tile:
        raise ValueError(f'tile_starts: overlap must be in [0, tile), got overlap={overlap}, tile={tile}')
    if length <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)
    return starts


def _ramp(size: int, overlap: int, ramp_start: bool, ramp_end: bool) -> torch.Tensor:
    """1-D weights: 1 inside, rising linearly over ``overlap`` samples at each end that borders another tile.

    The ramp never reaches 0 ((i + 1) / (overlap + 1)), so every pixel keeps a positive total weight.
    """
    weights = torch.ones(size, dtype=torch.float64)
    width = min(overlap, size)
    if width > 0:
        ramp = torch.arange(1, width + 1, dtype=torch.float64) / (width + 1)
        if ramp_start:
            weights[:width] = torch.minimum(weights[:width], ramp)
        if ramp_end:
            weights[size - width:] = torch.minimum(weights[size - width:], ramp.flip(0))
    return weights


def blend_weights(height: int,
                  width: int,
                  overlap: int,
                  edges: Tuple[bool, bool, bool, bool] = (True, True, True, True)) -> torch.Tensor:
    """Separable blending window of one tile, shape ``(height, width)``, values in ``(0, 1]``.

    Args:
        height: Tile height.
        width: Tile width.
        overlap: Ramp length in pixels (the tile overlap).
        edges: Whether the (top, bottom, left, right) edge borders another tile and so should ramp; edges on the
            image border keep weight 1 because nothing else covers those pixels.

    Returns:
        float64 tensor of shape ``(height, width)``.
    """
    top, bottom, left, right = edges
    rows = _ramp(height, overlap, top, bottom)
    cols = _ramp(width, overlap, left, right)
    return rows[:, None] * cols[None, :]


def _reflect_indices(size: int, target: int) -> torch.Tensor:
    """Indices ``0..target-1`` folded back into ``[0, size)`` by mirror reflection (edge not repeated)."""
    idx = torch.arange(target)
    if size == 1:
        return torch.zeros(target, dtype=torch.long)
    period = 2 * (size - 1)
    idx = idx % period
    return torch.where(idx < size, idx, period - idx)


def reflect_pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad the last two axes at the bottom/right to multiples of ``multiple`` by mirror reflection.

    Works for any dtype (uint8 spike streams included) because it gathers by index instead of calling ``F.pad``.

    Args:
        x: Tensor ``(..., H, W)``.
        multiple: Size multiple, >= 1.

    Returns:
        ``x`` itself when no padding is needed, else a padded copy ``(..., H', W')``.
    """
    if multiple < 1:
        raise ValueError(f'reflect_pad_to_multiple: multiple must be >= 1, got {multiple}')
    height, width = x.shape[-2:]
    pad_h = (-height) % multiple
    pad_w = (-width) % multiple
    if pad_h == 0 and pad_w == 0:
        return x
    rows = _reflect_indices(height, height + pad_h).to(x.device)
    cols = _reflect_indices(width, width + pad_w).to(x.device)
    return x.index_select(-2, rows).index_select(-1, cols)


def tiled_apply(fn: Callable[..., torch.Tensor],
                inputs: Sequence[Optional[torch.Tensor]],
                tile: int = 256,
                overlap: int = 32,
                size_multiple: int = 1,
                progress: Optional[Callable[[int], None]] = None) -> torch.Tensor:
    """Apply ``fn`` to overlapping spatial tiles of ``inputs`` and blend the tile outputs into one image.

    Every input is cropped at the same spatial window (inputs that are ``None`` are passed through as ``None``, e.g. an
    absent FPN map), reflect-padded to ``size_multiple`` if the network needs it, and ``fn(*crops)`` must return a
    tensor ``(B, C, h', w')`` of the padded crop's size; the padding is cut off again before blending. Inputs keep
    their dtype and device: convert inside ``fn`` so that only one tile ever exists as float.

    Args:
        fn: Network call on one tile, e.g. ``lambda spk, gamma: net(spk.float(), gamma)``.
        inputs: Tensors ``(B, *, H, W)`` sharing ``H`` and ``W`` (and ``None`` entries).
        tile: Tile size in pixels; ``0`` or a size at least the frame's runs ``fn`` once on the whole frame.
        overlap: Overlap between neighbouring tiles (clipped to ``tile - 1``).
        size_multiple: Pad each tile's height and width to a multiple of this before calling ``fn``.
        progress: Called with 1 after each tile (e.g. ``tqdm.update``).

    Returns:
        float32 tensor ``(B, C, H, W)`` on the device of ``fn``'s output.
    """
    present = [x for x in inputs if x is not None]
    if not present:
        raise ValueError('tiled_apply: at least one input must be a tensor')
    height, width = present[0].shape[-2:]
    for x in present[1:]:
        if tuple(x.shape[-2:]) != (height, width):
            raise ValueError(
                f'tiled_apply: inputs disagree on spatial size: {tuple(x.shape[-2:])} vs {(height, width)}')
    tile_h = height if tile <= 0 else min(tile, height)
    tile_w = width if tile <= 0 else min(tile, width)
    row_starts = tile_starts(height, tile_h, min(overlap, tile_h - 1))
    col_starts = tile_starts(width, tile_w, min(overlap, tile_w - 1))

    output = None
    weight_sum = None
    for top in row_starts:
        for left in col_starts:
            crops = [None if x is None else x[..., top:top + tile_h, left:left + tile_w] for x in inputs]
            padded = [None if c is None else reflect_pad_to_multiple(c, size_multiple) for c in crops]
            result = fn(*padded)
            if result.dim() != 4:
                raise ValueError(f'tiled_apply: fn must return (B, C, H, W), got shape {tuple(result.shape)}')
            result = result[..., :tile_h, :tile_w].double()
            if output is None:
                batch, channels = result.shape[:2]
                # float64 accumulation keeps the identity round trip exact to float32 rounding
                output = torch.zeros(batch, channels, height, width, dtype=torch.float64, device=result.device)
                weight_sum = torch.zeros(height, width, dtype=torch.float64, device=result.device)
            edges = (top > 0, top + tile_h < height, left > 0, left + tile_w < width)
            weights = blend_weights(tile_h, tile_w, overlap, edges).to(result.device)
            output[..., top:top + tile_h, left:left + tile_w] += result * weights
            weight_sum[top:top + tile_h, left:left + tile_w] += weights
            if progress is not None:
                progress(1)
    return (output / weight_sum).float()


def count_tiles(height: int, width: int, tile: int, overlap: int) -> int:
    """Number of tiles :func:`tiled_apply` will run for a ``height × width`` frame (for progress bars)."""
    tile_h = height if tile <= 0 else min(tile, height)
    tile_w = width if tile <= 0 else min(tile, width)
    return len(tile_starts(height, tile_h, min(overlap, tile_h - 1))) * len(
        tile_starts(width, tile_w, min(overlap, tile_w - 1)))
