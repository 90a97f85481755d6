"""The per-recording report of ``despike-infer --report``: classical reconstructions beside DeSpike and a no-reference
quality table.

For every centre time, :func:`report_centre` writes ``DIR/tfp/`` and ``DIR/tfi/`` (the classical reconstructions of the
same window the network read, through ``rate_to_display``) and ``DIR/side_by_side/`` (TFP | TFI | DeSpike), and
measures NIQE and RMS contrast on the written 8-bit images; :func:`write_report` then writes ``DIR/report.json`` and
``DIR/report.md`` (a summary over centres, then one row per centre).
"""
import json
import math
import os.path as osp
from typing import Dict, List, Optional, Sequence

import cv2
import numpy as np

from despike_basicsr.inference.display import Exposure, expose
from despike_basicsr.errors import DespikeUserError
from despike_basicsr.metrics.noref_metric import NIQE_BLOCK, calculate_niqe_gray, calculate_rms_contrast
from despike_basicsr.spike.reconstruct import classical_display

METHODS = ('tfp', 'tfi', 'despike')
METHOD_LABELS = {'tfp': 'TFP', 'tfi': 'TFI', 'despike': 'DeSpike'}
#: Folders of the report's pictures (besides ``despike/``, which every run writes).
REPORT_FOLDERS = ('tfp', 'tfi', 'side_by_side')
REPORT_FILES = ('report.md', 'report.json')


class ReportWriteError(DespikeUserError, OSError):
    """An output file that cannot be written; the message names it."""


# ------------------------------------------------------------------------------------------------------------ images
def to_uint8(img: np.ndarray) -> np.ndarray:
    """[0, 1] float image → uint8 (rounded, clipped), as BasicSR's tensor2img does."""
    return (np.clip(img, 0.0, 1.0) * 255.0).round().astype(np.uint8)


def side_by_side(images: Sequence[np.ndarray], labels: Sequence[str], gap: int = 4, band: int = 22) -> np.ndarray:
    """Grayscale uint8 panels left to right with a white gap and a label band on top."""
    height = images[0].shape[0]
    panels = []
    for i, (img, label) in enumerate(zip(images, labels)):
        top = np.full((band, img.shape[1]), 255, np.uint8)
        cv2.putText(top, label, (4, band - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.5, 0, 1, cv2.LINE_AA)
        panels.append(np.vstack([top, img]))
        if i < len(images) - 1:
            panels.append(np.full((height + band, gap), 255, np.uint8))
    return np.hstack(panels)


def write_png(path: str, img: np.ndarray) -> None:
    """Write ``img`` with OpenCV; a failure is a :class:`ReportWriteError` naming ``path``."""
    if not cv2.imwrite(path, img):
        raise ReportWriteError(f'{path}: could not write the image')


# ----------------------------------------------------------------------------------------------------------- measures
def measure(img_u8: np.ndarray) -> Dict[str, Optional[float]]:
    """NIQE (None when the frame holds fewer than two 96×96 blocks or is flat) and RMS contrast of one uint8 image."""
    try:
        niqe = calculate_niqe_gray(img_u8)
    except ValueError:
        niqe = None
    if niqe is not None and not math.isfinite(niqe):
        niqe = None
    return {'niqe': niqe, 'rms_contrast': calculate_rms_contrast(img_u8)}


def report_centre(out_dir: str,
                  name: str,
                  window: np.ndarray,
                  local_centre: int,
                  despike_u8: np.ndarray,
                  tfp_window: int,
                  eta: float,
                  threshold: float,
                  fpn_gamma: Optional[np.ndarray] = None,
                  exposure: Exposure = 'fixed') -> Dict[str, Dict[str, Optional[float]]]:
    """The report's pictures of one centre time, and their measures.

    Writes ``out_dir/tfp/name``, ``out_dir/tfi/name`` (classical reconstructions of frame ``local_centre`` of
    ``window``) and ``out_dir/side_by_side/name`` (TFP | TFI | DeSpike).

    Args:
        out_dir: The run's output folder (its report folders exist).
        name: PNG file name of this centre.
        window: ``(T, H, W)`` 0/1 frames the network read.
        local_centre: The centre's index inside ``window``.
        despike_u8: The network's image, uint8.
        tfp_window: TFP window in frames.
        eta: Photo-electric rate η of the classical display mapping.
        threshold: Firing threshold θ of the classical display mapping.
        fpn_gamma: ``(H, W)`` FPN correction γ = R_ref / R, or ``None``.
        exposure: The display exposure DeSpike's image was given (:func:`~.display.expose`); TFP and
            TFI get the same treatment (with ``'auto'`` each measures its own gain), so the side-by-side is fair.

    Returns:
        ``{method: {'niqe': ..., 'rms_contrast': ...}}`` for :data:`METHODS`, measured on the written 8-bit images.
    """
    images = {'despike': despike_u8}
    for method in ('tfp', 'tfi'):
        display = classical_display(window, method, center=local_centre, window=tfp_window, eta=eta,
                                    threshold=threshold, fpn_gamma=fpn_gamma, clip=False)
        images[method] = to_uint8(expose(np.asarray(display, np.float32), exposure)[0])
        write_png(osp.join(out_dir, method, name), images[method])
    write_png(
        osp.join(out_dir, 'side_by_side', name),
        side_by_side([images[m] for m in METHODS], [METHOD_LABELS[m] for m in METHODS]))
    return {m: measure(images[m]) for m in METHODS}


# ------------------------------------------------------------------------------------------------------------ report
def _mean(values: Sequence[Optional[float]]) -> Optional[float]:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def _fmt(value: Optional[float], digits: int) -> str:
    return 'n/a' if value is None else f'{value:.{digits}f}'


def write_report(out_dir: str, info: dict, rows: List[dict]) -> dict:
    """Write ``report.json`` and ``report.md`` (summary over centres, then one row per centre); returns the json.

    Args:
        out_dir: Output folder.
        info: The run's description (``input``, ``height``, ``width``, ``frames``, ``window_len``, ``tfp_window``,
            ``fpn``, ...); it heads the json.
        rows: One dict per centre: ``centre``, ``window`` and the measures of every method (:func:`report_centre`).
    """
    summary = {
        m: {
            'niqe': _mean([r[m]['niqe'] for r in rows]),
            'rms_contrast': _mean([r[m]['rms_contrast'] for r in rows]),
            'niqe_count': sum(r[m]['niqe'] is not None for r in rows),
        }
        for m in METHODS
    }
    report = dict(info, summary=summary, per_centre=rows)
    with open(osp.join(out_dir, 'report.json'), 'w', encoding='utf-8') as f:
        json.dump(report, f, indent=2)

    lines = [
        f'# No-reference quality: {osp.basename(info["input"])}',
        '',
        f'{info["height"]}x{info["width"]}, {info["frames"]} frames; {len(rows)} centre time(s); network window '
        f'{info["window_len"]} frames; TFP window {info["tfp_window"]}; FPN correction: {info["fpn"] or "none"}.',
        f'NIQE: BasicSR\'s, lower is better ({NIQE_BLOCK}x{NIQE_BLOCK} blocks; n/a below two blocks or on flat '
        'images). RMS contrast: standard deviation of intensities in [0, 1]. Measured on the written 8-bit PNGs.',
        '',
        '| method | NIQE (lower is better) | RMS contrast |',
        '|---|---|---|',
    ]
    for m in METHODS:
        lines.append(f'| {METHOD_LABELS[m]} | {_fmt(summary[m]["niqe"], 3)} | {_fmt(summary[m]["rms_contrast"], 4)} |')
    niqe_columns = ' | '.join(f'{METHOD_LABELS[m]} NIQE' for m in METHODS)
    contrast_columns = ' | '.join(f'{METHOD_LABELS[m]} contrast' for m in METHODS)
    lines += ['', '## Per centre time', '', f'| centre | {niqe_columns} | {contrast_columns} |']
    lines.append('|---' * (1 + 2 * len(METHODS)) + '|')
    for r in rows:
        lines.append(f'| {r["centre"]} | ' + ' | '.join(_fmt(r[m]['niqe'], 3) for m in METHODS) + ' | ' +
                     ' | '.join(_fmt(r[m]['rms_contrast'], 4) for m in METHODS) + ' |')
    with open(osp.join(out_dir, 'report.md'), 'w', encoding='utf-8') as f:
        f.write('\n'.join(lines) + '\n')
    return report
