"""Inference: a trained network turned into images of real recordings.

:class:`DeSpikeReconstructor` (:mod:`.reconstructor`) is the Python API; :mod:`.network` finds, builds and loads a
checkpoint's network and runs it tile by tile (:mod:`.tiling`); :mod:`.display` exposes the images for display;
:mod:`.defocus_map` estimates per-pixel defocus; :mod:`.recording_report` writes ``despike-infer --report``. The
console entries are ``despike-infer`` (:mod:`.infer`) and ``despike-export`` (:mod:`.export`).

This layer stands on the registries (``archs/``, ...) and ``spike/``; it imports neither ``training/`` nor
``evaluation/``. See docs/architecture.md.
"""
from despike_basicsr.inference.reconstructor import DeSpikeReconstructor

__all__ = ['DeSpikeReconstructor']
