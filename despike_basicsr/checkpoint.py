"""Reading and writing checkpoints safely: atomic saves, weights-only loads, and errors that name the file.

One code path for every place that touches a ``.pth`` or ``.state`` file: BasicSR's save/load/resume (patched in
:mod:`despike_basicsr.compat`), ``despike-infer`` and ``scripts/benchmark.py``.
"""
import collections
import os
from typing import Any, Dict, Optional

import torch

from despike_basicsr.errors import DespikeUserError

#: How many keys an error message lists before it says "... (N more)".
MAX_LISTED_KEYS = 20


class CheckpointError(DespikeUserError, RuntimeError):
    """A checkpoint or training state that cannot be used (missing, truncated, or made for another network)."""


def atomic_torch_save(obj: Any, path: str) -> None:
    """``torch.save`` to ``path`` through a temporary file in the same folder and an atomic rename.

    A process killed mid-write leaves ``path`` as it was (the previous checkpoint, or nothing) and at most a stray
    ``*.tmp-<pid>`` file, which no loader looks at.
    """
    tmp_path = f'{path}.tmp-{os.getpid()}'
    try:
        with open(tmp_path, 'wb') as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    finally:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)


def safe_torch_load(path: str, map_location: Any = 'cpu', what: str = 'checkpoint') -> Any:
    """Load with ``weights_only=True`` (no code runs) and turn every failure into a :class:`CheckpointError`.

    BasicSR's training states hold the schedulers' ``collections.Counter`` milestones, which are allowed here.
    """
    if not os.path.isfile(path):
        raise CheckpointError(f'{what} not found: {path}')
    if os.path.getsize(path) == 0:
        raise CheckpointError(f'{what} is empty (0 bytes): {path}')
    try:
        with torch.serialization.safe_globals([collections.Counter, collections.OrderedDict]):
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises many types for truncated/corrupt archives
        detail = (str(error).strip().splitlines() or [''])[0][:200]
        raise CheckpointError(f'cannot read {what} {path}: it is truncated, corrupt or not a torch checkpoint '
                              f'({type(error).__name__}: {detail})') from error


def _listed(keys: list) -> str:
    shown = ', '.join(keys[:MAX_LISTED_KEYS])
    return shown + (f', ... ({len(keys) - MAX_LISTED_KEYS} more)' if len(keys) > MAX_LISTED_KEYS else '')


def describe_state_dict_mismatch(expected: Dict[str, Any], found: Dict[str, Any]) -> str:
    """The keys missing from / unexpected in ``found`` and the keys whose shapes differ; empty when they fit."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    shapes = sorted(k for k in set(expected) & set(found) if tuple(expected[k].shape) != tuple(found[k].shape))
    parts = []
    if missing:
        parts.append(f'{len(missing)} missing in checkpoint ({_listed(missing)})')
    if unexpected:
        parts.append(f'{len(unexpected)} unexpected in checkpoint ({_listed(unexpected)})')
    if shapes:
        parts.append(
            f'{len(shapes)} shape mismatches (' +
            _listed([f'{k}: network {tuple(expected[k].shape)} vs checkpoint {tuple(found[k].shape)}'
                     for k in shapes]) + ')')
    return '; '.join(parts)


def state_dict_from_checkpoint(checkpoint: Any,
                               path: str,
                               param_key: Optional[str] = None,
                               require_key: bool = False) -> Dict[str, torch.Tensor]:
    """The network weights inside a loaded checkpoint.

    Accepts BasicSR's ``{'params': ..., 'params_ema': ...}`` layout and a bare state dict. ``param_key`` is taken
    when present; otherwise ``params_ema`` (the weights BasicSR validates with) before ``params``. With
    ``require_key`` a missing ``param_key`` is an error instead. DDP's ``module.`` prefixes are removed.
    """
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f'{path}: expected a dict of weights (BasicSR .pth), found {type(checkpoint).__name__}')
    if param_key is not None and param_key not in checkpoint and require_key:
        raise CheckpointError(f'{path}: no key {param_key!r} in the checkpoint, found keys '
                              f'{_listed(sorted(map(str, checkpoint)))}')
    candidates = [k for k in (param_key, 'params_ema', 'params') if k is not None and k in checkpoint]
    state = checkpoint[candidates[0]] if candidates else checkpoint
    if not isinstance(state, dict) or not state or not all(torch.is_tensor(v) for v in state.values()):
        raise CheckpointError(f"{path}: expected a state dict of tensors (bare or under 'params'/'params_ema'), "
                              f'found keys {_listed(sorted(map(str, checkpoint)))}')
    return {(k[len('module.'):] if k.startswith('module.') else k): v for k, v in state.items()}


def load_network_weights(path: str,
                         param_key: Optional[str] = None,
                         require_key: bool = False,
                         what: str = 'network checkpoint') -> Dict[str, torch.Tensor]:
    """:func:`safe_torch_load` then :func:`state_dict_from_checkpoint`."""
    return state_dict_from_checkpoint(safe_torch_load(path, what=what), path, param_key, require_key)


def check_fits(net: torch.nn.Module, state: Dict[str, torch.Tensor], path: str, source: str = '') -> None:
    """Raise a :class:`CheckpointError` listing the mismatched keys and shapes when ``state`` does not fit ``net``.

    A network that adapts older weights while loading (``adapt_state_dict``, e.g. a new zero-initialised output
    channel) is checked against the adapted weights, as ``load_state_dict`` will see them.
    """
    adapt = getattr(net, 'adapt_state_dict', None)
    mismatch = describe_state_dict_mismatch(net.state_dict(), adapt(state) if callable(adapt) else state)
    if mismatch:
        built = f' built from {source}' if source else ''
        raise CheckpointError(f'{path}: checkpoint does not fit {type(net).__name__}{built} (another arch or other '
                              f'options?): {mismatch}')
