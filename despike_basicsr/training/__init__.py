"""Training around BasicSR's pipeline: the options check (:mod:`.options`), the shared start of the ``train`` and
``test`` entries (:mod:`.entry`), a campaign's state across sittings (:mod:`.campaign`), the GPU burst
(:mod:`.gpu_burst`) and profiling (:mod:`.profiling`).

This layer stands on the registries (``archs/``, ``models/``, ...) and ``spike/``; it imports neither ``inference/``
nor ``evaluation/``. See docs/architecture.md.
"""
