"""What DeSpikeModel and CascadeModel share: variable-length batches, the optimiser step, and evaluation.

GPU switches (all off by default), read from the ``train`` section:

- ``amp: bf16 | fp16 | false``: mixed precision. Subclasses run their forward and loss inside ``with self.autocast():``;
  :meth:`SpikeSRModel.apply_losses` runs backward and the step outside it, with a ``GradScaler`` for fp16 (scale,
  unscale before clipping, step, update). bf16 needs no scaler.
- ``compile: true`` (or a ``torch.compile`` mode such as ``max-autotune``): ``net_g`` is compiled in place
  (``nn.Module.compile``: same module, same state-dict keys, checkpoints unchanged), once, before DDP wraps it. A probe
  compiles a tiny function first, so a machine where ``torch.compile`` cannot work stops with a clear message at
  start-up; an error raised later from inside the compiled network (some ops fail there, e.g. the replicate padding
  of GKMNet's backward on CPU in torch 2.14) stops training with a message naming the switch.
- ``channels_last: true``: ``net_g`` (and ``net_g_ema``) in the channels-last memory format.
- ``max_nonfinite_steps`` (default 5): a step whose loss or gradient norm is not finite is skipped (gradients zeroed,
  a warning names the iteration); that many in a row stop training with :class:`NonFiniteTrainingError`, before
  anything is saved from that state. An fp16 overflow that the ``GradScaler`` resolves by lowering its scale is not
  counted (while the scale is still >= 1).

A resume state that says ``restart: {optimizer: true, warmup_iter: N}`` (the half-precision state the DPDD protocol
commits for networks too large to keep whole, ``evaluation.protocol``) carries no optimiser moments: the learning rate
then ramps up linearly over the N iterations after the resumed one (:meth:`SpikeSRModel.resume_training`).

A clean stop (:func:`install_stop_handler`, set up by ``despike-train``): the first SIGINT or SIGTERM (Ctrl-C, ``kill``,
``timeout --signal INT``) lets the running optimiser step finish, saves weights and training state there (the same
state a regular checkpoint of that iteration holds) and ends with :class:`TrainingStopped`, so ``--auto_resume``
loses nothing. A second signal, or one while no spike model trains (e.g. BasicSR's SRModel), stops at once
(Python's ``KeyboardInterrupt``).
"""
import contextlib
import math
import re
import signal
import weakref
from typing import Any, Callable, ContextManager, Dict, List, Optional, Sequence, Tuple, Union

import torch
from basicsr.archs import build_network
from basicsr.models.sr_model import SRModel
from basicsr.utils import get_root_logger
from torch import Tensor
from torch import distributed as dist

from despike_basicsr import compat

AMP_DTYPES = {'bf16': torch.bfloat16, 'fp16': torch.float16}
DEFAULT_MAX_NONFINITE_STEPS = 5
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

_stop_requests = 0  # signals received since install_stop_handler
_live_models: 'weakref.WeakSet[SpikeSRModel]' = weakref.WeakSet()


class TrainingStopped(Exception):
    """A stop signal ended training after the state of the last finished iteration was saved."""


def _request_stop(signum: int, frame: Any) -> None:
    global _stop_requests
    _stop_requests += 1
    if _stop_requests > 1 or not _live_models:  # asked twice, or no model here would act on it
        raise KeyboardInterrupt
    get_root_logger().warning(f'{signal.Signals(signum).name} received: saving the state after this iteration, then '
                              'stopping (send it again to stop at once)')


def install_stop_handler() -> None:
    """Turn the first SIGINT/SIGTERM into a stop after the running iteration (see the module docstring).

    Install it before the data loader starts its workers: forked workers inherit the handler and keep serving batches.
    """
    global _stop_requests
    _stop_requests = 0
    for signum in STOP_SIGNALS:
        signal.signal(signum, _request_stop)


def stop_requested() -> bool:
    """Whether a stop signal arrived since :func:`install_stop_handler`."""
    return _stop_requests > 0


def save_stopped_models() -> List[str]:
    """Save every live model's last finished iteration (for a stop that ended in another exception, e.g. a data
    worker that took the signal itself); returns what was saved, one line each."""
    return [line for model in list(_live_models) if (line := model.save_stopped_state())]


class NonFiniteTrainingError(RuntimeError):
    """Training stopped: too many consecutive optimiser steps had a non-finite loss or gradient.

    Deliberately not an ``OptionsError``/``CheckpointError``: BasicSR's loop does not catch it, so the run ends before
    the next checkpoint is written; ``despike-train`` reports it in one line and exits with status 3.
    """


def parse_amp(value: Any) -> Optional[torch.dtype]:
    """``train.amp`` as an autocast dtype: ``'bf16'``, ``'fp16'``, or off (``false``, ``None``, ``'false'``, ``'off'``).

    Raises:
        ValueError: For any other value (``true`` included: say which precision).
    """
    if value in (None, False, 'false', 'off', 'none', ''):
        return None
    if isinstance(value, str) and value.lower() in AMP_DTYPES:
        return AMP_DTYPES[value.lower()]
    raise ValueError(f"train.amp must be 'bf16', 'fp16' or false, got {value!r}")


def parse_compile(value: Any) -> Optional[str]:
    """``train.compile`` as a ``torch.compile`` mode (``'default'`` for ``true``), or None when off.

    Raises:
        ValueError: For a value that is neither a boolean nor a mode name.
    """
    if value in (None, False, 'false', 'off'):
        return None
    if value is True or value == 'true':
        return 'default'
    modes = ('default', 'reduce-overhead', 'max-autotune', 'max-autotune-no-cudagraphs')
    if value in modes:
        return value
    raise ValueError(f'train.compile must be true, false or one of {modes}, got {value!r}')


#: Where torch.compile's machinery lives; an exception raised from a frame in one of these is a compilation problem.
_COMPILE_FRAMES = ('/torch/_dynamo/', '/torch/_inductor/', '/torch/_functorch/', 'torchinductor_')


def raised_by_torch_compile(error: BaseException) -> bool:
    """Whether ``error`` was raised inside ``torch.compile``'s machinery (dynamo, AOT autograd, inductor's code)."""
    tb = error.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and any(
        marker in tb.tb_frame.f_code.co_filename.replace('\\', '/') for marker in _COMPILE_FRAMES)


def check_compile_works(device: torch.device) -> None:
    """Compile and run a tiny function on ``device``; a failure names the cause instead of surfacing mid-training.

    Raises:
        RuntimeError: If ``torch.compile`` is unavailable or fails on this machine (no C++ compiler, no Triton, ...).
    """
    try:
        probe = torch.compile(lambda x: torch.sin(x) * 2 + 1)
        result = probe(torch.ones(8, device=device))
        if not torch.allclose(result, torch.sin(torch.ones(8, device=device)) * 2 + 1):
            raise RuntimeError('the compiled probe returned a wrong result')
    except Exception as err:  # the backends raise many types; all mean the same for the user
        first_line = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
        raise RuntimeError(f'train.compile is on but torch.compile does not work on this machine ({device.type}): '
                           f'{type(err).__name__}: {first_line}. Set train.compile: false.') from err


def crop_center_frames(spikes: Tensor, lengths: Union[Tensor, Sequence[int], None]) -> Tensor:
    """Keep the centre ``min(lengths)`` frames of a ``(B, T, H, W)`` batch (frames ``T//2 − L//2 … + L``).

    Each sample's window is centred on its target frame (docs/architecture.md), so the centre frames are valid for
    every sample of the batch, and the target frame lands at the network's centre ``L // 2``.

    Raises:
        ValueError: If the shortest length is outside ``[1, T]``.
    """
    if lengths is None:
        return spikes
    shortest = int(torch.as_tensor(lengths).min())
    total = spikes.shape[1]
    if not 1 <= shortest <= total:
        raise ValueError(f'lq_len must lie in [1, {total}] (the frames in lq), found {shortest}')
    if shortest == total:
        return spikes
    start = total // 2 - shortest // 2
    return spikes[:, start:start + shortest]


class SpikeSRModel(SRModel):
    """SRModel plus the steps both spike models take the same way (not registered; subclass it).

    Subclasses write their ``optimize_parameters`` as::

        self.optimizer_g.zero_grad()
        with self.autocast():
            output = self.net_g(...)
            loss_dict = {...}
        self.apply_losses(loss_dict)
    """

    grad_clip_norm: Optional[float] = None
    ema_decay: float = 0
    amp_dtype: Optional[torch.dtype] = None
    max_nonfinite_steps: int = DEFAULT_MAX_NONFINITE_STEPS

    def __init__(self, opt: Dict[str, Any]) -> None:
        self.current_iter: Optional[int] = None
        self.restart_warmup: Optional[Tuple[int, int]] = None  # (resumed iteration, warm-up length)
        self._scheduled_lrs: Optional[List[List[float]]] = None  # the schedule's rates while the warm-up scales them
        self.nonfinite_streak = 0
        self.completed_iter: Optional[int] = None  # the last iteration whose step ran (or was skipped)
        self._stop_saved_iter: Optional[int] = None
        self._autocast_entered = False
        _live_models.add(self)
        self._read_acceleration_options(opt)
        super().__init__(opt)  # builds net_g through model_to_device (compile, channels_last), then the optimiser
        self.setup_acceleration()
        if self.compile_mode is not None:
            self.optimize_parameters = self._explain_compile_failures(self.optimize_parameters)
            self.test = self._explain_compile_failures(self.test)

    def _explain_compile_failures(self, method: Callable) -> Callable:
        """``method`` whose exceptions from inside ``torch.compile`` name the switch that caused them."""

        def wrapped(*args, **kwargs):
            try:
                return method(*args, **kwargs)
            except Exception as err:
                if not raised_by_torch_compile(err):
                    raise
                arch = (self.opt.get('network_g') or {}).get('type', 'net_g')
                first_line = (str(err).strip().splitlines() or [''])[0][:300]
                message = (f'{method.__name__} at iter {self.current_iter}: the compiled {arch} failed inside '
                           f'torch.compile ({type(err).__name__}: {first_line}). This is a torch.compile problem with '
                           f'this network on {self.device.type}; set train.compile: false')
                raise RuntimeError(message) from err

        wrapped.__name__ = method.__name__
        wrapped.__doc__ = method.__doc__
        return wrapped

    # ------------------------------------------------------------------------------------------------------------------
    # Optimiser
    def setup_optimizers(self) -> None:
        """SRModel's optimiser over ``net_g``'s parameters, or with ``train.trainable`` (a list of regular
        expressions, ``re.search`` on the parameter names) over the matching ones only, the others frozen: e.g.
        ``['levels\\.\\d+\\.head\\.']`` fine-tunes the output heads of a trained network at a higher rate.

        Raises:
            ValueError: ``train.trainable`` is not a list of strings, or matches no parameter.
        """
        train_opt = self.opt['train']
        patterns = train_opt.get('trainable')
        named = list(self.net_g.named_parameters())
        if patterns is not None:
            if isinstance(patterns, str) or not all(isinstance(p, str) for p in patterns) or not patterns:
                raise ValueError(f'train.trainable must be a non-empty list of regular expressions, got {patterns!r}')
            compiled = [re.compile(p) for p in patterns]
            for name, param in named:
                param.requires_grad_(any(c.search(name) for c in compiled))
            chosen = [param for _, param in named if param.requires_grad]
            if not chosen:
                raise ValueError(f'train.trainable {patterns} matches none of the {len(named)} parameters of '
                                 f'{type(self.get_bare_model(self.net_g)).__name__} (e.g. {named[0][0]!r})')
            get_root_logger().info(f'train.trainable: {sum(p.numel() for p in chosen):,} of '
                                   f'{sum(p.numel() for _, p in named):,} parameters ({len(chosen)} tensors) are '
                                   'optimised, the rest frozen')
        optim_opt = dict(train_opt['optim_g'])
        optim_type = optim_opt.pop('type')
        self.optimizer_g = self.get_optimizer(optim_type, [p for _, p in named if p.requires_grad], **optim_opt)
        self.optimizers.append(self.optimizer_g)

    # ------------------------------------------------------------------------------------------------------------------
    # EMA
    def setup_ema(self) -> None:
        """The exponential moving average of ``net_g`` (``train.ema_decay`` > 0), set up as BasicSR's SRModel does.

        ``net_g_ema`` is a second ``network_g`` on the model's device, in eval mode, loaded from the ``params_ema`` of
        ``path.pretrain_network_g`` when one is given (``params`` if the file has no EMA), else a copy of ``net_g``.
        :meth:`apply_losses` updates it after every optimiser step; :meth:`evaluation_network` evaluates with it.
        Subclasses that write their own ``init_training_settings`` call this first.
        """
        self.ema_decay = self.opt['train'].get('ema_decay', 0)
        if self.ema_decay <= 0:
            return
        get_root_logger().info(f'Use Exponential Moving Average with decay: {self.ema_decay}')
        self.net_g_ema = build_network(self.opt['network_g']).to(self.device)
        load_path = self.opt['path'].get('pretrain_network_g', None)
        if load_path is not None:
            self.load_network(self.net_g_ema, load_path, self.opt['path'].get('strict_load_g', True), 'params_ema')
        else:
            self.model_ema(0)  # copy net_g's weights
        self.net_g_ema.eval()

    # ------------------------------------------------------------------------------------------------------------------
    # GPU switches
    def _read_acceleration_options(self, opt: Dict[str, Any]) -> None:
        train_opt = (opt.get('train') or {}) if opt.get('is_train') else {}
        self.amp_dtype = parse_amp(train_opt.get('amp'))
        self.compile_mode = parse_compile(train_opt.get('compile'))
        self.channels_last = bool(train_opt.get('channels_last', False))
        limit = train_opt.get('max_nonfinite_steps', DEFAULT_MAX_NONFINITE_STEPS)
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f'train.max_nonfinite_steps must be an integer >= 1, got {limit!r}')
        self.max_nonfinite_steps = limit

    def model_to_device(self, net: torch.nn.Module) -> torch.nn.Module:
        """Memory format and compilation first (on the bare module, before DDP wraps it), then BasicSR's placement."""
        net = net.to(self.device)
        if self.channels_last:
            net = net.to(memory_format=torch.channels_last)
        if self.compile_mode is not None:
            check_compile_works(self.device)
            net.compile(mode=None if self.compile_mode == 'default' else self.compile_mode)
        return super().model_to_device(net)

    def setup_acceleration(self) -> None:
        """Once the networks and the optimiser exist: the EMA's memory format, the fp16 ``GradScaler``, a log line.

        ``net_g`` itself was converted and compiled in :meth:`model_to_device`.
        """
        if self.channels_last and hasattr(self, 'net_g_ema'):
            self.net_g_ema.to(memory_format=torch.channels_last)
        fp16 = self.amp_dtype == torch.float16
        self.grad_scaler = torch.amp.GradScaler(self.device.type, enabled=fp16) if fp16 else None
        if self.is_train:
            amp = {None: 'off', torch.bfloat16: 'bf16', torch.float16: 'fp16 (GradScaler)'}[self.amp_dtype]
            get_root_logger().info(f'Acceleration: amp {amp}, compile {self.compile_mode or "off"}, channels_last '
                                   f'{"on" if self.channels_last else "off"}, max_nonfinite_steps '
                                   f'{self.max_nonfinite_steps}')

    def autocast(self) -> ContextManager:
        """``torch.autocast`` in the ``train.amp`` precision (a no-op when off); wrap the forward and the loss in it."""
        if self.amp_dtype is not None:
            self._autocast_entered = True  # apply_losses checks that the forward ran under it
        return self.amp_context()

    def amp_context(self) -> ContextManager:
        """:meth:`autocast` without marking the step's forward as run under it: for work outside the trained forward
        (a frozen front end in ``feed_data``), so that :meth:`apply_losses`'s check still sees the forward itself."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def resume_training(self, resume_state: Dict[str, Any]) -> None:
        """BasicSR's resume; a state with ``restart.optimizer`` (no optimiser moments: Adam starts afresh) also sets
        the linear warm-up of ``restart.warmup_iter`` iterations after ``resume_state['iter']``."""
        super().resume_training(resume_state)
        restart = resume_state.get('restart') or {}
        length = int(restart.get('warmup_iter', 0) or 0)
        if restart.get('optimizer') and length > 0:
            self.restart_warmup = (int(resume_state['iter']), length)
            get_root_logger().info(f'Resumed from a state without optimiser moments (restart: {restart}): the '
                                   f'learning rate ramps up over iterations {resume_state["iter"] + 1}-'
                                   f'{resume_state["iter"] + length}')

    def _restore_scheduled_lrs(self) -> None:
        """Undo the warm-up's scaling (chained schedulers such as MultiStepRestartLR read the current rate)."""
        if self._scheduled_lrs is not None:
            self._set_lr(self._scheduled_lrs)
            self._scheduled_lrs = None

    def update_learning_rate(self, current_iter: int, warmup_iter: int = -1) -> None:
        """BasicSR calls this first in every iteration; the iteration is kept for the non-finite-step messages.

        After a restart without optimiser moments the scheduled rate is scaled by ``(iter - resumed) / warmup``.
        """
        self.current_iter = current_iter
        self._restore_scheduled_lrs()
        super().update_learning_rate(current_iter, warmup_iter)
        if self.restart_warmup is not None:
            start, length = self.restart_warmup
            if start < current_iter < start + length:
                self._scheduled_lrs = [[group['lr'] for group in opt.param_groups] for opt in self.optimizers]
                factor = (current_iter - start) / length
                self._set_lr([[lr * factor for lr in lrs] for lrs in self._scheduled_lrs])

    def save_stopped_state(self) -> str:
        """Save weights and training state at :attr:`completed_iter` unless done already, under the running epoch
        (:func:`~despike_basicsr.compat.training_epoch`; 0 outside BasicSR's loop); returns a line saying what was
        saved ('' when nothing was)."""
        if self.completed_iter is None or self._stop_saved_iter == self.completed_iter:
            return ''
        epoch = compat.training_epoch()
        self.save(0 if epoch is None else epoch, self.completed_iter)
        self._stop_saved_iter = self.completed_iter
        line = f'stopped: weights and training state saved at iteration {self.completed_iter}'
        get_root_logger().info(line)
        return line

    def save_training_state(self, epoch: int, current_iter: int) -> None:
        """BasicSR's save (compat: atomic, with RNG states) with the scheduled, not the warm-up-scaled, rates."""
        scaled = None
        if self._scheduled_lrs is not None:
            scaled = [[group['lr'] for group in opt.param_groups] for opt in self.optimizers]
            self._set_lr(self._scheduled_lrs)
        try:
            super().save_training_state(epoch, current_iter)
        finally:
            if scaled is not None:
                self._set_lr(scaled)

    # ------------------------------------------------------------------------------------------------------------------
    # The optimiser step
    def apply_losses(self, loss_dict: Dict[str, Tensor], current_iter: Optional[int] = None) -> None:
        """Backpropagate the sum of ``loss_dict``, clip (``train.grad_clip_norm``), step, log, update the EMA.

        With ``train.amp: fp16`` the loss is scaled by the ``GradScaler`` and the gradients unscaled before clipping.
        A non-finite loss or gradient norm skips the step (see the module docstring).

        Args:
            loss_dict: The loss terms (summed for the backward pass, logged one by one).
            current_iter: The iteration, for messages; by default the one BasicSR last passed to
                :meth:`update_learning_rate`.

        Raises:
            ValueError: If ``loss_dict`` is empty, or ``train.amp`` is on but the forward did not run in
                :meth:`autocast`.
            NonFiniteTrainingError: After ``train.max_nonfinite_steps`` consecutive skipped steps.
            TrainingStopped: After a stop signal (on any rank), once this step's state is saved.
        """
        if not loss_dict:
            raise ValueError('no loss term is configured: set train.pixel_opt (or fft_opt / lpips_opt) in the options')
        if self.amp_dtype is not None and not self._autocast_entered:
            raise ValueError(f'train.amp is on but {type(self).__name__}.optimize_parameters does not run its forward '
                             'and loss inside "with self.autocast():"; add it there or set train.amp: false')
        self._autocast_entered = False
        iteration = current_iter if current_iter is not None else self.current_iter
        loss = sum(loss_dict.values())
        scaler = self.grad_scaler
        (scaler.scale(loss) if scaler is not None else loss).backward()
        if scaler is not None:
            scaler.unscale_(self.optimizer_g)
        params = [p for p in self.net_g.parameters() if p.grad is not None]
        if self.grad_clip_norm:
            grad_norm = torch.nn.utils.clip_grad_norm_(params, self.grad_clip_norm)
        else:
            grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params]) if params else loss.new_zeros(())
        finite = torch.isfinite(loss.detach().float()) & torch.isfinite(grad_norm.float())
        self.log_dict = self.reduce_loss_dict(loss_dict)
        step_finite, stop = self._agree_across_ranks(finite, stop_requested())
        if step_finite:
            if scaler is not None:
                scaler.step(self.optimizer_g)
                scaler.update()
            else:
                self.optimizer_g.step()
            self.nonfinite_streak = 0
            if self.ema_decay > 0:
                self.model_ema(decay=self.ema_decay)
        else:
            self._skip_step(loss, grad_norm, loss_dict, iteration)
        self.completed_iter = iteration
        if stop:
            raise TrainingStopped(self.save_stopped_state() or 'stopped: no iteration number to save under')

    def _agree_across_ranks(self, finite: Tensor, stop: bool) -> Tuple[bool, bool]:
        """(every rank's loss and gradient norm are finite, some rank was asked to stop): one all-reduce per step
        when distributed, so all ranks step or skip, and stop, together."""
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            flags = torch.stack([finite.reshape(()), finite.new_tensor(not stop)]).to(self.device, torch.int32)
            dist.all_reduce(flags, op=dist.ReduceOp.MIN)  # min of "go on" = not (any rank stops)
            all_finite, go_on = flags.tolist()
            return bool(all_finite), not go_on
        return bool(finite.item()), stop

    def _skip_step(self, loss: Tensor, grad_norm: Tensor, loss_dict: Dict[str, Tensor],
                   iteration: Optional[int]) -> None:
        """Drop this step's gradients; count it unless it is an fp16 overflow the GradScaler deals with."""
        scaler = self.grad_scaler
        self.optimizer_g.zero_grad(set_to_none=True)
        where = f'iter {iteration}' if iteration is not None else 'this iteration'
        if scaler is not None:
            scale = scaler.get_scale()
            scaler.update()  # found inf after unscale_: the scale drops
            if math.isfinite(float(loss.detach().float())) and scale >= 1.0:
                get_root_logger().info(f'{where}: fp16 gradient overflow, step skipped; loss scale {scale:g} -> '
                                       f'{scaler.get_scale():g}')
                return
        self.nonfinite_streak += 1
        terms = ', '.join(f'{name}={float(value.detach().float()):.4g}' for name, value in loss_dict.items())
        logger = get_root_logger()
        logger.warning(f'{where}: non-finite loss or gradient ({terms}, gradient norm {float(grad_norm):.4g}); '
                       f'optimiser step skipped ({self.nonfinite_streak} in a row, limit {self.max_nonfinite_steps})')
        if self.nonfinite_streak >= self.max_nonfinite_steps:
            models = (self.opt.get('path') or {}).get('models', 'experiments/<name>/models')
            message = (f'training stopped at {where}: {self.nonfinite_streak} consecutive optimiser steps had a '
                       f'non-finite loss or gradient (train.max_nonfinite_steps = {self.max_nonfinite_steps}). '
                       f'Nothing was saved from this state; the last checkpoint in {models} is intact: resume from it '
                       '(--auto_resume) after fixing the data or lowering the learning rate')
            logger.error(message)
            raise NonFiniteTrainingError(message)

    def evaluation_network(self) -> torch.nn.Module:
        """``net_g_ema`` when EMA is on, else the bare ``net_g``.

        Never the DDP wrapper: only rank 0 validates, and a DDP forward would broadcast the network's buffers to ranks
        that never join that collective (gloo aborts, NCCL hangs).
        """
        return self.net_g_ema if hasattr(self, 'net_g_ema') else self.get_bare_model(self.net_g)

    def evaluate(self, forward: Callable[[torch.nn.Module], Tensor]) -> Tensor:
        """``forward(net)`` on :meth:`evaluation_network` in eval mode without gradients; the mode is restored."""
        net = self.evaluation_network()
        was_training = net.training
        net.eval()
        with torch.no_grad():
            result = forward(net)
        net.train(was_training)
        return result
