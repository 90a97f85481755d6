"""Checks an options file before BasicSR reads it, so a typo costs a clear message instead of a traceback mid-run.

BasicSR silently ignores unknown keys and fails late (at the first iteration, or at the first validation hours later)
on wrong types. :func:`check_options` looks at the parts of the file this plugin understands: top-level keys, the
registered ``type:`` names (model, networks, datasets, losses, metrics), the keyword arguments each network and loss
accepts, the types of the numbers the trainer uses, and whether DeSpikeNet reads the streams the data gives.
"""
import difflib
import inspect
from typing import Any, Dict, Iterable, List, Optional

from despike_basicsr.options_file import OptionsError, load_options_file

#: Top-level keys BasicSR 1.4.2 (train/test pipelines, models, loggers) and this plugin read.
KNOWN_TOP_LEVEL_KEYS = frozenset({
    'name', 'model_type', 'scale', 'num_gpu', 'manual_seed', 'datasets', 'path', 'train', 'val', 'logger',
    'dist_params', 'find_unused_parameters', 'is_train', 'dist', 'rank', 'world_size', 'auto_resume', 'root_path',
    'front_end', 'network_g', 'network_d'
})
#: Keys read by ``basicsr.data.build_dataloader`` and BasicSR's prefetchers, besides a dataset's own.
DATALOADER_KEYS = ('name', 'type', 'phase', 'batch_size_per_gpu', 'num_worker_per_gpu', 'dataset_enlarge_ratio',
                   'prefetch_mode', 'pin_memory', 'persistent_workers', 'num_prefetch_queue', 'scale')


def _suggest(name: str, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(candidates), n=1)
    return f' (did you mean {close[0]!r}?)' if close else ''


def _registry_names(registry) -> List[str]:
    return sorted(name for name, _ in registry)


def _check_type(where: str, value: Any, expected: tuple, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, expected):
        raise OptionsError(f'{where} must be {what}, found {value!r} ({type(value).__name__})')


def _check_registered(where: str, name: Any, registry) -> Any:
    if not isinstance(name, str):
        raise OptionsError(f'{where} must be a registered name, found {name!r}')
    if name not in registry and f'{name}_basicsr' not in registry:  # BasicSR's own suffix fallback
        names = _registry_names(registry)
        raise OptionsError(
            f'{where}: {name!r} is not registered{_suggest(name, names)}. Registered: {", ".join(names)}')
    return registry.get(name)


def _check_kwargs(where: str, target: Any, kwargs: Dict[str, Any]) -> None:
    """Keyword arguments that ``target`` (a class) does not accept are an error unless it takes ``**kwargs``."""
    params = inspect.signature(target).parameters
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return
    accepted = [n for n in params if n != 'self']
    for key in kwargs:
        if key not in accepted:
            raise OptionsError(f'{where}: unknown argument {key!r} for {target.__name__}{_suggest(key, accepted)}; '
                               f'accepted: {", ".join(accepted)}')


def check_options(opt: Dict[str, Any], source: str = '<options>') -> Dict[str, Any]:
    """Validate a parsed options dictionary.

    Args:
        opt: The options as loaded from YAML.
        source: File name used in error messages.

    Returns:
        ``opt`` unchanged.

    Raises:
        OptionsError: naming ``source`` and the offending key.
    """
    import despike_basicsr
    despike_basicsr.register()  # compat before basicsr loads; fills the registries
    from basicsr.utils.registry import ARCH_REGISTRY, DATASET_REGISTRY, LOSS_REGISTRY, METRIC_REGISTRY, MODEL_REGISTRY

    if not isinstance(opt, dict):
        raise OptionsError(f'{source}: expected a mapping of options, found {type(opt).__name__}')
    for key in opt:
        if key not in KNOWN_TOP_LEVEL_KEYS:
            raise OptionsError(f'{source}: unknown top-level key {key!r}{_suggest(key, KNOWN_TOP_LEVEL_KEYS)}')
    for key in ('name', 'model_type'):
        if key not in opt:
            raise OptionsError(f'{source}: missing required key {key!r}')
    _check_registered(f'{source}: model_type', opt['model_type'], MODEL_REGISTRY)
    if opt.get('num_gpu', 'auto') != 'auto':
        _check_type(f'{source}: num_gpu', opt['num_gpu'], (int, ), "an integer or 'auto'")
    if opt.get('manual_seed') is not None:
        _check_type(f'{source}: manual_seed', opt['manual_seed'], (int, ), 'an integer')

    for net_key in (k for k in opt if k.startswith('network_')):
        net_opt = dict(opt[net_key] or {})
        arch = _check_registered(f'{source}: {net_key}.type', net_opt.pop('type', None), ARCH_REGISTRY)
        _check_kwargs(f'{source}: {net_key}', arch, net_opt)

    for phase, dataset_opt in (opt.get('datasets') or {}).items():
        where = f'{source}: datasets.{phase}'
        if not isinstance(dataset_opt, dict):
            raise OptionsError(f'{where} must be a mapping, found {dataset_opt!r}')
        _check_registered(f'{where}.type', dataset_opt.get('type'), DATASET_REGISTRY)
        if phase == 'train':
            for key in ('batch_size_per_gpu', 'num_worker_per_gpu'):
                if key in dataset_opt:
                    _check_type(f'{where}.{key}', dataset_opt[key], (int, ), 'an integer')
        _check_windows_fit(where, opt.get('network_g') or {}, dataset_opt)

    train_opt = opt.get('train') or {}
    for key, value in train_opt.items():
        if key.endswith('_opt') and isinstance(value, dict) and key not in ('optim_g', 'optim_d'):
            loss_opt = dict(value)
            loss = _check_registered(f'{source}: train.{key}.type', loss_opt.pop('type', None), LOSS_REGISTRY)
            _check_kwargs(f'{source}: train.{key}', loss, loss_opt)
    if 'total_iter' in train_opt:
        _check_type(f'{source}: train.total_iter', train_opt['total_iter'], (int, float), 'a number')
    for optim_key in ('optim_g', 'optim_d'):
        if optim_key in train_opt and 'lr' in train_opt[optim_key]:
            _check_type(f'{source}: train.{optim_key}.lr', train_opt[optim_key]['lr'], (int, float), 'a number')
    _check_acceleration(source, train_opt)

    for name, metric_opt in ((opt.get('val') or {}).get('metrics') or {}).items():
        _check_registered(f'{source}: val.metrics.{name}.type', (metric_opt or {}).get('type'), METRIC_REGISTRY)
    return opt


def _check_acceleration(source: str, train_opt: Dict[str, Any]) -> None:
    """``train.amp`` / ``compile`` / ``channels_last`` / ``max_nonfinite_steps`` (models/spike_base.py) parse."""
    from despike_basicsr.models.spike_base import parse_amp, parse_compile
    for key, parse in (('amp', parse_amp), ('compile', parse_compile)):
        if key in train_opt:
            try:
                parse(train_opt[key])
            except ValueError as err:
                raise OptionsError(f'{source}: {err}') from None
    if 'channels_last' in train_opt and not isinstance(train_opt['channels_last'], bool):
        raise OptionsError(f'{source}: train.channels_last must be true or false, found {train_opt["channels_last"]!r}')
    limit = train_opt.get('max_nonfinite_steps', 1)
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise OptionsError(f'{source}: train.max_nonfinite_steps must be an integer >= 1, found {limit!r}')


def _check_windows_fit(where: str, network_opt: Dict[str, Any], dataset_opt: Dict[str, Any]) -> None:
    """The shortest stream a dataset hands DeSpikeNet must be one it reads.

    DeSpikeNet clips every window to the stream, down to ``min(MIN_STREAM_LEN, smallest window)`` steps
    (:data:`~despike_basicsr.archs.despike_arch.MIN_STREAM_LEN`, 8); this is the same bound, checked before training
    starts. Other networks with windows (DefocusMapNet) clip them down to one frame and read any stream.
    """
    if network_opt.get('type') != 'DeSpikeNet':
        return
    from despike_basicsr.archs.despike_arch import MIN_STREAM_LEN, PAPER_WINDOWS
    windows = network_opt.get('windows') or list(PAPER_WINDOWS)
    if not isinstance(windows, (list, tuple)) or not all(isinstance(w, int) for w in windows):
        return  # DeSpikeNet itself names a malformed windows list when it is built
    shortest = min(MIN_STREAM_LEN, min(windows))
    lengths = []
    if dataset_opt.get('temporal_len'):
        temporal_len = dataset_opt['temporal_len']
        lengths.append(('temporal_len', min(temporal_len) if isinstance(temporal_len, (list, tuple)) else temporal_len))
    if dataset_opt.get('val_len'):
        lengths.append(('val_len', dataset_opt['val_len']))
    for key, length in lengths:
        if isinstance(length, int) and length < shortest:
            raise OptionsError(f'{where}.{key}: streams of {length} steps are shorter than DeSpikeNet reads: at least '
                               f'{shortest} steps, min({MIN_STREAM_LEN}, the smallest of network_g.windows = '
                               f'{list(windows)}); lengthen the streams')


def check_options_file(path: str, extra: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Load and validate an options file; returns the parsed dictionary."""
    opt = load_options_file(path)
    if extra:
        opt.update(extra)
    return check_options(opt, source=path)
