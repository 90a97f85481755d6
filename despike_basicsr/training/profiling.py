"""Measuring inference and training cost: the machine (CPU model, oneDNN's ISA), a test stream, latency, FLOPs and
peak memory (``scripts/bench_inference.py``, ``scripts/bench_amp.py``, ``scripts/gpu_check.py``).

Numbers vary with the machine and its load; docs/performance.md lists figures measured here.
"""
import os
import platform
import resource
import subprocess
import sys
import time
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch

from despike_basicsr.device import synchronize
from despike_basicsr.spike import simulate


ISA_PROBE = ('import torch; from torch.nn import functional as F; '
             'F.conv2d(torch.ones(1, 32, 64, 64), torch.ones(32, 32, 3, 3))')


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else ``platform.processor()``)."""
    try:
        with open('/proc/cpuinfo', encoding='utf-8') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or 'unknown'


def onednn_isa() -> str:
    """oneDNN's ISA line (``ONEDNN_VERBOSE=1`` in a subprocess running one convolution), e.g. ``Intel AVX-512 ...``."""
    env = dict(os.environ, ONEDNN_VERBOSE='1')
    done = subprocess.run([sys.executable, '-c', ISA_PROBE], capture_output=True, text=True, env=env, check=False)
    for line in done.stdout.splitlines():
        if ',isa:' in line:
            return line.split(',isa:', 1)[1].strip()
    return 'unknown (oneDNN printed no ISA line)'


def make_stream(height: int, width: int, steps: int, device: torch.device) -> torch.Tensor:
    """A (1, T, H, W) uint8 stream of a random piecewise-constant scene (cost does not depend on content)."""
    rng = np.random.default_rng(0)
    scene = np.full((height, width), 0.4, np.float32)
    for _ in range(64):
        y, x = rng.integers(0, height), rng.integers(0, width)
        scene[y:y + rng.integers(5, 80), x:x + rng.integers(5, 80)] = rng.uniform(0.05, 0.95)
    return torch.from_numpy(simulate(scene, steps, seed=0))[None].to(device)


def interleaved_latency(runs: Dict[str, Callable],
                        spikes: Any,
                        device: torch.device,
                        warmup: int,
                        repeats: int,
                        cpu_times: Optional[Dict[str, List[float]]] = None,
                        inference: bool = True) -> Dict[str, List[float]]:
    """Seconds of ``repeats`` calls ``run(spikes)`` of every method, the methods taking turns.

    Round r runs the methods in order, reversed every other round (A B, B A, A B, ...), so that a change in the
    machine's load during the measurement falls on all of them alike; round r of every method can be compared
    directly (a paired ratio). ``warmup`` untimed rounds come first.

    Args:
        runs: Method name -> function of the stream.
        spikes: The input stream (passed to every run as it is).
        device: Its device (synchronised around every call).
        warmup: Untimed rounds.
        repeats: Timed rounds.
        cpu_times: If given, filled with method name -> CPU seconds of this process for each timed call
            (``time.process_time``: on a loaded machine it leaves out the time spent waiting for a core).
        inference: Run under ``torch.inference_mode`` (False for training steps).

    Returns:
        Method name -> seconds of each timed call, in round order.
    """
    names = list(runs)
    times: Dict[str, List[float]] = {name: [] for name in names}
    if cpu_times is not None:
        cpu_times.update({name: [] for name in names})
    with torch.inference_mode(inference):
        for _ in range(warmup):
            for name in names:
                runs[name](spikes)
        synchronize(device)
        for round_index in range(repeats):
            for name in (names if round_index % 2 == 0 else names[::-1]):
                start, cpu_start = time.perf_counter(), time.process_time()
                runs[name](spikes)
                synchronize(device)
                times[name].append(time.perf_counter() - start)
                if cpu_times is not None:
                    cpu_times[name].append(time.process_time() - cpu_start)
    return times


def flops(run: Callable, spikes: torch.Tensor) -> int:
    """FLOPs of one ``run(spikes)`` (``torch.utils.flop_counter``: convolutions and matrix products only)."""
    from torch.utils.flop_counter import FlopCounterMode
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        run(spikes)
    return int(counter.get_total_flops())


def cuda_peak(run: Callable, spikes: torch.Tensor, device: torch.device) -> int:
    """Bytes allocated at the peak of one forward beyond what was allocated before it."""
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    with torch.inference_mode():
        run(spikes)
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before


def peak_rss_bytes() -> int:
    """This process's peak resident set size: VmHWM on Linux (per address space), else ru_maxrss."""
    try:
        with open('/proc/self/status', encoding='ascii') as f:
            for line in f:
                if line.startswith('VmHWM:'):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    # ru_maxrss: kilobytes on Linux, bytes on macOS
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == 'darwin' else 1024)
