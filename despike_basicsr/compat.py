"""The one place where basicsr 1.4.2 is adapted to current torch/torchvision/numpy, to machines without CUDA, and made
safe to resume. Nothing here edits installed files: each patch replaces one basicsr function when :func:`apply`
runs.

Importing this module changes nothing. :func:`apply` (idempotent) applies every patch;
:func:`despike_basicsr.register` and each registered subpackage (whose modules import basicsr) call it before basicsr
loads. Each patch names what breaks, which basicsr versions need it (checked against 1.4.2, the last release; later
releases may fix some) and what it changes. In short:

=====================================  ====================================================================
patch                                  why
=====================================  ====================================================================
``functional_tensor`` alias            torchvision >= 0.17 removed the module ``basicsr.data`` imports
``_init_dist_pytorch``                 calls ``torch.cuda.set_device`` unconditionally; uses ``RANK`` (global)
                                       instead of ``LOCAL_RANK`` for the device; NCCL only
``BaseModel.model_to_device``          wraps DDP with ``device_ids=[torch.cuda.current_device()]`` (CPU: crash)
``basicsr.train.load_resume_state``    maps the state onto CUDA unconditionally; ``--auto_resume`` searched
                                       ``experiments/`` relative to the working directory; torch >= 2.6 loads
                                       with ``weights_only=True`` and rejects the schedulers' ``Counter``
``BaseModel.save_network``,            a kill during ``torch.save`` left a truncated checkpoint under its final
``BaseModel.save_training_state``      name, which ``--auto_resume`` then picked; now temp file + rename
``BaseModel.load_network``             ``torch.load`` without ``weights_only``; mismatched keys surfaced as a raw
                                       ``load_state_dict`` traceback; now a message listing keys and shapes
``basicsr.train.EnlargedSampler``,     a resumed run restarted its epoch from the first batch and re-seeded the
``BaseModel.save_training_state``      random generators, so it saw other samples and crops than the run it
                                       continues; states now carry RNG states, the sampler resumes mid-epoch;
                                       it also records the running epoch (:func:`training_epoch`), which the
                                       training loop never hands the model, for a save on a stop signal
``basicsr.train.create_train_val_``    epochs estimated with ``ceil`` while the loader drops last batches: runs
``dataloader``                         ended before ``total_iter`` silently; now counted from the loader; it also
                                       tells the resumed sampler where the saved run stopped (read from the
                                       ``path.resume_state`` file, no state shared between patches)
``Registry.get``                       an unknown ``type:`` gave "No object named X"; now lists what is registered
``basicsr.train.train_pipeline``,      never destroy the process group; a gloo process leaving it to interpreter
``basicsr.test.test_pipeline``         exit can abort there (SIGABRT, "terminate called without an active
                                       exception"; pytorch/pytorch#190489); now destroyed when the pipeline ends
=====================================  ====================================================================
"""
import functools
import math
import os
import random
import sys
import types
from typing import Any, Callable, Dict, Optional

from despike_basicsr.checkpoint import (CheckpointError, atomic_torch_save, check_fits, safe_torch_load,
                                        state_dict_from_checkpoint)

__all__ = [
    'apply', 'CheckpointError', 'atomic_torch_save', 'safe_torch_load', 'find_latest_state', 'capture_rng_state',
    'restore_rng_state', 'choose_dist_backend', 'release_process_group', 'training_epoch'
]

_APPLIED = False
_training_epoch: Optional[int] = None  # the epoch BasicSR's training loop last handed its sampler (set_epoch)


def training_epoch() -> Optional[int]:
    """The epoch the running training is in (the last ``set_epoch`` of its sampler), or None before any."""
    return _training_epoch


#: Environment variable that overrides the torch.distributed backend (``nccl``, ``gloo``); ``despike_basicsr.train``
#: sets it from the options' ``dist_params: {backend: ...}``.
DIST_BACKEND_ENV = 'DESPIKE_DIST_BACKEND'
#: Process-group timeout in minutes (torch's defaults: 30 for gloo, 10 for NCCL); from ``dist_params: {timeout: ...}``.
#: Raise it when rank 0's validation takes longer than that, or the other ranks' next collective times out.
DIST_TIMEOUT_ENV = 'DESPIKE_DIST_TIMEOUT_MIN'


# ----------------------------------------------------------------------------------------------------------------------
# torch / torchvision
# ----------------------------------------------------------------------------------------------------------------------
def _install_functional_tensor_alias() -> None:
    """basicsr <= 1.4.2: ``basicsr.data.degradations`` imports ``torchvision.transforms.functional_tensor``.

    torchvision 0.17 removed that private module; the one function basicsr uses, ``rgb_to_grayscale``, lives in
    ``torchvision.transforms.functional``. We register a stand-in module under the old name (older torchvision keeps
    its own module).
    """
    name = 'torchvision.transforms.functional_tensor'
    if name in sys.modules:
        return
    try:
        import torchvision.transforms.functional_tensor  # noqa: F401
        return
    except ImportError:
        pass
    from torchvision.transforms import functional
    shim = types.ModuleType(name)
    shim.rgb_to_grayscale = functional.rgb_to_grayscale
    sys.modules[name] = shim


# ----------------------------------------------------------------------------------------------------------------------
# CPU and distributed
# ----------------------------------------------------------------------------------------------------------------------
def choose_dist_backend(requested: Optional[str] = None) -> str:
    """The torch.distributed backend: ``$DESPIKE_DIST_BACKEND``, else ``requested`` when it can run, else by device.

    NCCL needs CUDA; a CPU-only machine (or a CUDA one told so) uses gloo.
    """
    import torch
    override = os.environ.get(DIST_BACKEND_ENV)
    if override:
        if override == 'nccl' and not torch.cuda.is_available():
            raise RuntimeError(f'{DIST_BACKEND_ENV}=nccl (or dist_params.backend: nccl) needs CUDA, and this machine '
                               'has none; use gloo')
        return override
    if requested and (requested != 'nccl' or torch.cuda.is_available()):
        return requested
    return 'nccl' if torch.cuda.is_available() else 'gloo'


def _init_dist_pytorch(backend: str = 'nccl', **kwargs: Any) -> None:
    """basicsr <= 1.4.2 ``dist_util._init_dist_pytorch``: ``torch.cuda.set_device(RANK % num_gpus)`` crashes without
    CUDA (division by zero / no driver) and picks the wrong GPU on multi-node runs, where the device index is the
    node-local ``LOCAL_RANK`` that torchrun sets. Here: CUDA only when present, device from ``LOCAL_RANK``, NCCL on CUDA
    and gloo otherwise (overridable, see :func:`choose_dist_backend`), timeout from ``$DESPIKE_DIST_TIMEOUT_MIN``.
    """
    import datetime

    import torch
    import torch.distributed as dist
    backend = choose_dist_backend(backend)
    if torch.cuda.is_available():  # every backend: each process on its own GPU, not all on cuda:0
        local_rank = int(os.environ.get('LOCAL_RANK', os.environ.get('RANK', 0)))
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
    if os.environ.get(DIST_TIMEOUT_ENV) and 'timeout' not in kwargs:
        kwargs['timeout'] = datetime.timedelta(minutes=float(os.environ[DIST_TIMEOUT_ENV]))
    dist.init_process_group(backend=backend, **kwargs)


def release_process_group() -> None:
    """Destroy the default process group, if any, while the interpreter is fully alive.

    Left to interpreter exit, gloo's worker threads may still hold work whose tensors need the GIL being torn down, and
    the process aborts (seen on a 2-core CI run: the rank that finished first died with SIGABRT while rank 0 validated).
    Destroying is local to this rank: it neither waits for nor disturbs the others.
    """
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _make_releasing_pipeline(original: Callable) -> Callable:
    """basicsr <= 1.4.2 ``train_pipeline`` / ``test_pipeline`` return with the process group still alive; the
    wrapper releases it (:func:`release_process_group`) once the pipeline returns. After an exception the group is
    left as it is: another rank may still be inside a collective with this one."""

    @functools.wraps(original)
    def pipeline(root_path: str) -> None:
        original(root_path)
        release_process_group()

    return pipeline


def _model_to_device(self, net):
    """basicsr <= 1.4.2 ``BaseModel.model_to_device``: DDP got ``device_ids=[torch.cuda.current_device()]`` even on
    CPU. CPU modules must be wrapped without ``device_ids``."""
    import torch
    from torch.nn.parallel import DataParallel, DistributedDataParallel
    net = net.to(self.device)
    if self.opt['dist']:
        find_unused = self.opt.get('find_unused_parameters', False)
        device_ids = [torch.cuda.current_device()] if self.device.type == 'cuda' else None
        net = DistributedDataParallel(net, device_ids=device_ids, find_unused_parameters=find_unused)
    elif self.opt['num_gpu'] > 1:
        net = DataParallel(net)
    return net


def find_latest_state(state_dir: str) -> Optional[str]:
    """The ``<iter>.state`` file with the highest iteration in ``state_dir`` (temporary files are ignored)."""
    if not os.path.isdir(state_dir):
        return None
    iters = []
    for name in os.listdir(state_dir):
        stem, ext = os.path.splitext(name)
        if ext == '.state' and stem.isdigit():
            iters.append(int(stem))
    return os.path.join(state_dir, f'{max(iters)}.state') if iters else None


def _load_resume_state(opt: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """basicsr <= 1.4.2 ``train.load_resume_state``: mapped the state to ``cuda(current_device())`` (crash on CPU),
    looked for ``experiments/<name>`` relative to the working directory instead of the experiment root, and called
    ``torch.load`` with torch's default ``weights_only`` (True since torch 2.6), which rejects the schedulers'
    ``Counter``. Here: the state folder from the options, the model's device, weights-only loading that allows
    ``Counter``, and a :class:`CheckpointError` naming a missing or corrupt file.
    """
    import torch
    from basicsr.utils import check_resume
    if opt['auto_resume']:
        path = find_latest_state(opt['path']['training_states'])
        if path is not None:
            opt['path']['resume_state'] = path
    else:
        path = opt['path'].get('resume_state')
    if path is None:
        return None
    map_location = 'cpu'
    if opt.get('num_gpu', 0) != 0 and torch.cuda.is_available():
        map_location = f'cuda:{torch.cuda.current_device()}'
    state = safe_torch_load(path, map_location=map_location, what='training state')
    for key in ('epoch', 'iter', 'optimizers', 'schedulers'):
        if key not in state:
            raise CheckpointError(f'training state {path} has no {key!r} entry: not a BasicSR training state')
    check_resume(opt, state['iter'])
    for name, value in opt['path'].items():
        if name.startswith('pretrain_network') and value and not os.path.isfile(value):
            raise CheckpointError(f'training state {path} (iter {state["iter"]}) needs the network file {value}, '
                                  'which is missing')
    return state


# ----------------------------------------------------------------------------------------------------------------------
# Safe checkpoints
# ----------------------------------------------------------------------------------------------------------------------
def _save_network(self, net, net_label, current_iter, param_key='params'):
    """basicsr <= 1.4.2 ``BaseModel.save_network`` wrote with ``torch.save(obj, final_path)``: a kill mid-write left a
    truncated ``.pth``. Same file names and contents, written atomically, by rank 0 only (as before); ``net_g``
    checkpoints also carry the ``network_g`` options that built them, so they load without the options file."""
    from basicsr.utils.dist_util import get_dist_info
    if get_dist_info()[0] != 0:
        return
    if current_iter == -1:
        current_iter = 'latest'
    save_path = os.path.join(self.opt['path']['models'], f'{net_label}_{current_iter}.pth')
    nets = net if isinstance(net, list) else [net]
    param_keys = param_key if isinstance(param_key, list) else [param_key]
    if len(nets) != len(param_keys):
        raise ValueError(f'save_network: {len(nets)} networks but {len(param_keys)} param keys')
    save_dict = {}
    for net_, key_ in zip(nets, param_keys):
        state_dict = self.get_bare_model(net_).state_dict()
        save_dict[key_] = {(k[7:] if k.startswith('module.') else k): v.cpu() for k, v in state_dict.items()}
    if net_label == 'net_g' and isinstance(self.opt.get('network_g'), dict):
        save_dict['network_g'] = dict(self.opt['network_g'])
    atomic_torch_save(save_dict, save_path)


def _save_training_state(self, epoch, current_iter):
    """basicsr <= 1.4.2 ``BaseModel.save_training_state``: same atomic-write fix as :func:`_save_network` (rank 0
    only, as before), and the random generators' states go with it (see :class:`ResumableEnlargedSampler`)."""
    from basicsr.utils.dist_util import get_dist_info
    if current_iter == -1 or get_dist_info()[0] != 0:
        return
    state = {
        'epoch': epoch,
        'iter': current_iter,
        'optimizers': [o.state_dict() for o in self.optimizers],
        'schedulers': [s.state_dict() for s in self.schedulers],
        'rng': capture_rng_state(),
    }
    atomic_torch_save(state, os.path.join(self.opt['path']['training_states'], f'{current_iter}.state'))


def _load_network(self, net, load_path, strict=True, param_key='params'):
    """basicsr <= 1.4.2 ``BaseModel.load_network``: ``torch.load`` without ``weights_only`` (arbitrary code on load),
    and a network/checkpoint mismatch ended in a raw ``load_state_dict`` traceback. Here: weights-only loading, the
    ``params``/``params_ema`` fallback as before, and a :class:`CheckpointError` listing mismatched keys and shapes.
    """
    from basicsr.utils import get_root_logger
    logger = get_root_logger()
    net = self.get_bare_model(net)
    loaded = safe_torch_load(load_path, what='network checkpoint')
    if param_key is not None and param_key not in loaded and 'params' in loaded:
        logger.info(f'Loading: {param_key} does not exist in {load_path}, use params.')
    state_dict = state_dict_from_checkpoint(loaded, load_path, param_key)
    if strict:
        check_fits(net, state_dict, load_path)
    else:
        expected = net.state_dict()
        for key in [k for k in state_dict if k in expected and expected[k].shape != state_dict[k].shape]:
            logger.warning(f'Size differs, ignored [{key}]: network {tuple(expected[key].shape)}; '
                           f'checkpoint {tuple(state_dict[key].shape)}')
            state_dict.pop(key)
    logger.info(f'Loading {net.__class__.__name__} model from {load_path}, with param key: [{param_key}].')
    net.load_state_dict(state_dict, strict=strict)


# ----------------------------------------------------------------------------------------------------------------------
# Exact resume
# ----------------------------------------------------------------------------------------------------------------------
def capture_rng_state() -> Dict[str, Any]:
    """The states of Python's, NumPy's and torch's global generators, in a form ``weights_only`` loading accepts."""
    import numpy as np
    import torch
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        'python': random.getstate(),
        'numpy': {
            'kind': kind,
            'keys': torch.from_numpy(keys.astype(np.int64)),
            'pos': int(pos),
            'has_gauss': int(has_gauss),
            'cached_gaussian': float(cached)
        },
        'torch': torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    import numpy as np
    import torch
    version, internal, gauss = state['python']
    random.setstate((version, tuple(internal), gauss))
    numpy_state = state['numpy']
    np.random.set_state((numpy_state['kind'], numpy_state['keys'].numpy().astype(np.uint32), numpy_state['pos'],
                         numpy_state['has_gauss'], numpy_state['cached_gaussian']))
    torch.set_rng_state(state['torch'])
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])


def _resumable_sampler_class():
    from basicsr.data.data_sampler import EnlargedSampler

    class ResumableEnlargedSampler(EnlargedSampler):
        """BasicSR's ``EnlargedSampler`` that continues a resumed epoch where the saved run stopped.

        basicsr <= 1.4.2 restarts the resumed epoch from its first batch (so a run killed at iteration k and resumed
        trains on other samples than the uninterrupted run) and the generators restart from the seed (other crops).
        The training state records epoch, iteration and generator states; :func:`_make_create_train_val_dataloader`
        hands them to :meth:`resume_from`. In the resumed epoch this sampler skips the batches the saved run had
        already consumed and, at that moment (after the loader made its iterator, which draws from torch's
        generator), restores the generators. With ``num_worker_per_gpu: 0`` the resumed run then matches the
        uninterrupted one exactly; with workers, data order matches but workers re-seed as BasicSR does.
        """

        def __init__(self, dataset, num_replicas, rank, ratio=1):
            global _training_epoch
            super().__init__(dataset, num_replicas, rank, ratio)
            self.resume: Dict[str, Any] = {}
            _training_epoch = None  # a new training: an earlier one's epoch (same process) no longer applies

        def set_epoch(self, epoch: int) -> None:
            """BasicSR's, and the epoch kept for :func:`training_epoch` (a state saved on a stop needs it)."""
            global _training_epoch
            super().set_epoch(epoch)
            _training_epoch = epoch

        def resume_from(self, epoch: int, iteration: int, batch_size: int, rng: Optional[Dict[str, Any]]) -> None:
            """Continue the run saved at ``iteration`` of ``epoch`` (``batch_size``: samples per iteration and
            process; ``rng``: the generator states of :func:`capture_rng_state`, or None)."""
            self.resume = dict(epoch=epoch, iter=iteration, batch_size=batch_size, rng=rng)

        def __iter__(self):
            indices = list(super().__iter__())
            if self.resume and self.epoch == self.resume['epoch']:
                batch_size = self.resume['batch_size']
                batches_per_epoch = self.num_samples // batch_size  # BasicSR's train loader drops the last batch
                consumed = self.resume['iter'] - self.resume['epoch'] * batches_per_epoch
                if 0 <= consumed <= batches_per_epoch:
                    indices = indices[consumed * batch_size:]
                if self.resume.get('rng') is not None:
                    restore_rng_state(self.resume['rng'])
                self.resume = {}
            return iter(indices)

    return ResumableEnlargedSampler


def _resume_sampler(opt: Dict[str, Any], train_sampler: Any) -> None:
    """Tell a :class:`ResumableEnlargedSampler` where the resumed run stopped.

    The state file is the one BasicSR's ``train_pipeline`` resumes from: ``opt['path']['resume_state']``, which
    :func:`_load_resume_state` also sets for ``--auto_resume``. It is read again here (small next to a training run)
    so nothing passes between the two patches except the options BasicSR already hands both.
    """
    path = (opt.get('path') or {}).get('resume_state')
    if not path or not hasattr(train_sampler, 'resume_from'):
        return
    state = safe_torch_load(path, map_location='cpu', what='training state')
    train_opt = (opt.get('datasets') or {}).get('train') or {}
    multiplier = 1 if opt.get('dist') else max(1, int(opt.get('num_gpu') or 0))
    train_sampler.resume_from(state['epoch'], state['iter'],
                              int(train_opt.get('batch_size_per_gpu', 1)) * multiplier, state.get('rng'))


# ----------------------------------------------------------------------------------------------------------------------
# Correct iteration count
# ----------------------------------------------------------------------------------------------------------------------
def _make_create_train_val_dataloader(original: Callable) -> Callable:

    def create_train_val_dataloader(opt, logger):
        """basicsr <= 1.4.2 planned ``ceil(N·ratio / (batch·world))`` iterations per epoch, but its train loader drops
        the last incomplete batch of each process's ``ceil(N·ratio / world)`` samples, so with sizes that do not divide
        evenly training ended before ``total_iter`` without a word. Here the epochs come from the loader's real length,
        and a data set smaller than one batch is an error. A resumed run's sampler learns where the saved run stopped
        (:func:`_resume_sampler`)."""
        train_loader, train_sampler, val_loaders, total_epochs, total_iters = original(opt, logger)
        if train_loader is not None:
            batches = len(train_loader)
            if batches == 0:
                dataset_opt = opt['datasets']['train']
                raise ValueError(f'datasets.train ({dataset_opt.get("name")}): {len(train_loader.dataset)} samples '
                                 f'per process cannot fill one batch of {dataset_opt["batch_size_per_gpu"]}; lower '
                                 'batch_size_per_gpu or raise dataset_enlarge_ratio')
            needed = math.ceil(total_iters / batches)
            if needed != total_epochs:
                logger.info(f'Epochs recounted from the loader ({batches} batches per epoch): {needed} '
                            f'(BasicSR estimated {total_epochs}).')
            total_epochs = needed
            _resume_sampler(opt, train_sampler)
        return train_loader, train_sampler, val_loaders, total_epochs, total_iters

    return create_train_val_dataloader


# ----------------------------------------------------------------------------------------------------------------------
# Clearer errors
# ----------------------------------------------------------------------------------------------------------------------
def _make_registry_get(original: Callable) -> Callable:

    def get(self, name, suffix='basicsr'):
        """basicsr's ``Registry.get`` said only "No object named X"; the error now lists every registered name."""
        if name not in self._obj_map and f'{name}_{suffix}' not in self._obj_map:
            known = ', '.join(sorted(self._obj_map))
            raise KeyError(f"No object named '{name}' found in the '{self._name}' registry. Registered: {known}")
        return original(self, name, suffix)

    return get


def apply() -> None:
    """Apply every patch once (idempotent). :func:`despike_basicsr.register` and every registered subpackage call it
    before basicsr loads; importing this module changes nothing."""
    global _APPLIED
    if _APPLIED:
        return
    _install_functional_tensor_alias()

    import basicsr.test
    import basicsr.train
    from basicsr.models import base_model
    from basicsr.utils import dist_util, registry

    dist_util._init_dist_pytorch = _init_dist_pytorch
    base_model.BaseModel.model_to_device = _model_to_device
    base_model.BaseModel.save_network = _save_network
    base_model.BaseModel.save_training_state = _save_training_state
    base_model.BaseModel.load_network = _load_network
    basicsr.train.load_resume_state = _load_resume_state
    basicsr.train.EnlargedSampler = _resumable_sampler_class()
    basicsr.train.create_train_val_dataloader = _make_create_train_val_dataloader(
        basicsr.train.create_train_val_dataloader)
    registry.Registry.get = _make_registry_get(registry.Registry.get)
    basicsr.train.train_pipeline = _make_releasing_pipeline(basicsr.train.train_pipeline)
    basicsr.test.test_pipeline = _make_releasing_pipeline(basicsr.test.test_pipeline)
    _APPLIED = True
