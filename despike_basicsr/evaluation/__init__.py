"""Evaluation: the held-out evaluation (:mod:`.heldout`), the benchmark on a test LMDB (:mod:`.benchmarking`), the
learning curve (:mod:`.training_curve`) and the GPU readiness check (:mod:`.gpu_check`).

The top layer of the package: it may import everything below it (inference, training, the registries, spike) and
nothing imports it. See docs/architecture.md.
"""
