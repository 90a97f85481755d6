"""Cascade baseline: a spike reconstruction (TFP, TFI, or a trained RSIR / Spk2ImgNet) followed by a frame-domain
deblurring network, and the training stage of such a learned spike front end.

This is the "reconstruct, then deblur" pipeline DeSpike is compared with. Only the back end (any registered arch from
``network_g`` whose forward returns a coarse-to-fine list, or a single image) is trained, with that arch's own loss:
``pixel_opt`` (MultiScaleMSELoss) plus an optional ``fft_opt`` on the finest output; ``train.grad_clip_norm`` clips
gradients as DeSpikeModel does; ``train.amp`` / ``compile`` / ``channels_last`` are the shared switches of
:mod:`despike_basicsr.models.spike_base`.

Options (besides BasicSR's usual ones)::

    front_end: {type: tfp, window: 41, eta: 1.0, threshold: 2.0}   # or {type: tfi, eta: 1.0, threshold: 2.0}
    front_end: {type: learned, network: {type: RSIR}, weights: experiments/DPDDcpu_RSIR/models/net_g_latest.pth,
                fpn: true}                                          # a trained spike front end, frozen

``front_end.fpn: true`` multiplies the classical front end's rates by the batch's FPN factor ``gamma`` (the dataset's
``fpn.npz``), the compensation DeSpike's integration applies; the default ``false`` is the published cascades, which
have none. A learned front end with ``fpn: true`` receives ``gamma`` as its forward's ``gamma`` argument (RSIR's noise
model uses the FPN calibration; Spk2ImgNet takes none).

A learned front end is trained first, as its own stage (:class:`SpikeFrontEndModel`, ``model_type:
SpikeFrontEndModel``, its arch as ``network_g``): spikes in, the defocused image the camera saw out (the dataset's
``blurred``, stored by the LMDB preparation), since a reconstruction stage reconstructs what the sensor saw. The
cascade then loads its weights (``front_end.weights``, ``param_key`` default ``params_ema`` then ``params``), keeps it
frozen in eval mode, and trains the back end on its outputs, clipped to [0, 1] like the classical display images.
"""
import inspect
import os.path as osp
from collections import OrderedDict
from typing import Any, Dict, List, Optional, Sequence, Union

import torch
from basicsr.archs import build_network
from basicsr.losses import build_loss
from basicsr.utils.registry import ARCH_REGISTRY, MODEL_REGISTRY
from torch import Tensor, nn

from despike_basicsr.checkpoint import check_fits, load_network_weights
from despike_basicsr.models.spike_base import SpikeSRModel, crop_center_frames
from despike_basicsr.spike.reconstruct import classical_display

CLASSICAL_TYPES = ('tfp', 'tfi')
FRONT_END_TYPES = CLASSICAL_TYPES + ('learned', )


def parse_front_end(options: Dict[str, Any]) -> Dict[str, Any]:
    """Validate the ``front_end`` options and fill the defaults (window 41, eta 1, threshold 2, gamma 2.2, no fpn).

    Raises:
        ValueError: Naming the option, what was expected and what was found.
    """
    if not isinstance(options, dict) or 'type' not in options:
        raise ValueError(f"CascadeModel needs a 'front_end' option like {{type: tfp, window: 41}}, found {options!r}")
    if str(options['type']).lower() == 'learned':
        return parse_learned_front_end(options)
    known = {'type', 'window', 'eta', 'threshold', 'gamma', 'fpn'}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f'front_end: unknown option(s) {unknown}; expected some of {sorted(known)}')
    parsed = {'window': 41, 'eta': 1.0, 'threshold': 2.0, 'gamma': 2.2, 'fpn': False, **options}
    parsed['type'] = str(parsed['type']).lower()
    if parsed['type'] not in CLASSICAL_TYPES:
        raise ValueError(f"front_end.type must be one of {FRONT_END_TYPES}, found {options['type']!r}")
    if not isinstance(parsed['window'], int) or parsed['window'] < 1:
        raise ValueError(f"front_end.window must be a positive integer (frames), found {parsed['window']!r}")
    for name in ('eta', 'threshold', 'gamma'):
        if not isinstance(parsed[name], (int, float)) or parsed[name] <= 0:
            raise ValueError(f'front_end.{name} must be a positive number, found {parsed[name]!r}')
    if not isinstance(parsed['fpn'], bool):
        raise ValueError(f"front_end.fpn must be true or false, found {parsed['fpn']!r}")
    return parsed


def parse_learned_front_end(options: Dict[str, Any]) -> Dict[str, Any]:
    """Validate ``front_end: {type: learned, network: {type: ARCH, ...}, weights: PATH, param_key: KEY, fpn: BOOL}``.

    ``weights`` may be None only for an untrained front end in tests and smoke runs (``allow_untrained: true``).

    Raises:
        ValueError: Naming the option, what was expected and what was found.
    """
    known = {'type', 'network', 'weights', 'param_key', 'fpn', 'allow_untrained'}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f'front_end (learned): unknown option(s) {unknown}; expected some of {sorted(known)}')
    parsed = {'weights': None, 'param_key': None, 'fpn': False, 'allow_untrained': False, **options, 'type': 'learned'}
    network = parsed.get('network')
    if not isinstance(network, dict) or network.get('type') not in ARCH_REGISTRY:
        raise ValueError("front_end.network must name a registered arch like {type: RSIR} or {type: Spk2ImgNet}, "
                         f"found {network!r}")
    for name in ('fpn', 'allow_untrained'):
        if not isinstance(parsed[name], bool):
            raise ValueError(f'front_end.{name} must be true or false, found {parsed[name]!r}')
    if parsed['weights'] is None and not parsed['allow_untrained']:
        raise ValueError('front_end.weights must name the trained front end (the net_g_latest.pth of its '
                         'SpikeFrontEndModel stage; train that first)')
    return parsed


def accepts_gamma(net: nn.Module) -> bool:
    """Whether a spike network's forward takes the FPN factor as ``gamma`` (RSIR, DeSpikeNet) or not (Spk2ImgNet)."""
    net = getattr(net, 'module', net)  # DDP's forward hides the wrapped network's signature
    return 'gamma' in inspect.signature(net.forward).parameters


def run_spike_network(net: nn.Module, spikes: Tensor, gamma: Optional[Tensor], fpn: bool) -> Tensor:
    """``net(spikes, gamma=gamma)`` when ``fpn`` and the net takes it, else ``net(spikes)``; the finest output.

    Raises:
        ValueError: ``fpn`` is true but the batch has no ``gamma``.
    """
    if fpn and accepts_gamma(net):
        if gamma is None:
            raise ValueError('front_end.fpn is true but the batch has no FPN gamma: set the dataset option fpn '
                             '(true reads <dataroot>/fpn.npz)')
        return as_output_list(net(spikes, gamma=gamma))[-1]
    return as_output_list(net(spikes))[-1]


def build_learned_front_end(front_end: Dict[str, Any], device: torch.device) -> nn.Module:
    """The learned front end, its weights loaded strictly, frozen (no gradients) and in eval mode.

    Raises:
        FileNotFoundError: The weights file does not exist (train the front-end stage first).
        CheckpointError: The weights do not fit the network.
    """
    net = build_network(dict(front_end['network']))
    path = front_end.get('weights')
    if path is not None:
        if not osp.isfile(path):
            raise FileNotFoundError(f'front_end.weights {path} does not exist: train the front-end stage first '
                                    '(model_type SpikeFrontEndModel, e.g. options/dpdd_cpu/train_rsir.yml)')
        state = load_network_weights(path, front_end.get('param_key'), what='front-end weights')
        check_fits(net, state, path, 'front_end.network')
        net.load_state_dict(state, strict=True)
    net.requires_grad_(False)
    return net.to(device).eval()


def classical_reconstruction(spikes: Tensor, front_end: Dict[str, Any], fpn_gamma: Optional[Tensor] = None) -> Tensor:
    """TFP or TFI at the centre frame, mapped to a display image: ``(B, T, H, W)`` spikes -> ``(B, 1, H, W)``.

    ``fpn_gamma`` ``(B or 1, 1, H, W)`` is applied when ``front_end['fpn']`` is true (and ignored otherwise).

    Raises:
        ValueError: ``front_end['fpn']`` is true but no ``fpn_gamma`` is given.
    """
    if front_end.get('fpn') and fpn_gamma is None:
        raise ValueError('CascadeModel: front_end.fpn is true but the batch has no FPN gamma: set the dataset '
                         'option fpn (true reads <dataroot>/fpn.npz)')
    fpn = fpn_gamma[:, 0] if front_end.get('fpn') else None
    image = classical_display(spikes, front_end['type'], window=front_end['window'], eta=front_end['eta'],
                              threshold=front_end['threshold'], gamma=front_end['gamma'], fpn_gamma=fpn)
    return image.unsqueeze(1).float()


def as_output_list(outputs: Union[Tensor, Sequence[Tensor]]) -> List[Tensor]:
    """Networks return a coarse-to-fine list; a single tensor is a one-element list."""
    return [outputs] if torch.is_tensor(outputs) else list(outputs)


@MODEL_REGISTRY.register()
class CascadeModel(SpikeSRModel):
    """TFP/TFI front end + registered deblurring back end, with BasicSR's training and validation loop.

    ``feed_data`` takes the same batch as DeSpikeModel (``lq`` spikes ``(B, T, H, W)``, ``gt`` ``(B, 1, H, W)``,
    ``lq_len``); ``self.lq`` then holds the front end's image, which is what the back end sees and what
    ``get_current_visuals`` shows as the input.
    """

    def __init__(self, opt: Dict[str, Any]) -> None:
        self.front_end = parse_front_end(opt.get('front_end'))
        self.front_net: Optional[nn.Module] = None
        super().__init__(opt)
        if self.front_end['type'] == 'learned':
            self.front_net = build_learned_front_end(self.front_end, self.device)

    def init_training_settings(self) -> None:
        super().init_training_settings()
        fft_opt = self.opt['train'].get('fft_opt')
        self.cri_fft = build_loss(fft_opt).to(self.device) if fft_opt else None
        # Same optional clipping as DeSpikeModel, so one train section can serve every method.
        self.grad_clip_norm = self.opt['train'].get('grad_clip_norm')

    def feed_data(self, data: Dict[str, Any]) -> None:
        spikes = data['lq']
        if not torch.is_tensor(spikes) or spikes.dim() != 4:
            found = tuple(spikes.shape) if torch.is_tensor(spikes) else type(spikes).__name__
            raise ValueError(f'CascadeModel expects lq spikes shaped (B, T, H, W), found {found}')
        spikes = crop_center_frames(spikes, data.get('lq_len')).to(self.device)
        gamma = data.get('gamma')
        gamma = gamma.to(self.device).float() if gamma is not None else None
        with torch.no_grad():
            if self.front_net is not None:
                self.front_net.eval()  # frozen: BasicSR's loop never touches it, but keep it so
                # Under train.amp the frozen front end runs in that precision too: for Spk2ImgNet it is most of the
                # step. Outside training (test.py, scripts/benchmark.py: no amp) it runs in float32.
                with self.amp_context():
                    lq = run_spike_network(self.front_net, spikes, gamma, self.front_end['fpn'])
                self.lq = lq.float().clamp(0, 1)
            else:
                self.lq = classical_reconstruction(spikes, self.front_end, gamma)
        if 'gt' in data:
            self.gt = data['gt'].to(self.device)

    def optimize_parameters(self, current_iter: int) -> None:
        self.optimizer_g.zero_grad()
        with self.autocast():
            outputs = as_output_list(self.net_g(self.lq))
            self.output = outputs[-1]

            loss_dict = OrderedDict()
            if self.cri_pix:
                loss_dict['l_pix'] = self.cri_pix(outputs if len(outputs) > 1 else outputs[0], self.gt)
            if self.cri_fft:
                loss_dict['l_fft'] = self.cri_fft(outputs[-1], self.gt)
        self.apply_losses(loss_dict)

    def test(self) -> None:
        """Run the back end (:meth:`evaluation_network`) without gradients and keep its finest output."""
        self.output = self.evaluate(lambda net: as_output_list(net(self.lq))[-1])


@MODEL_REGISTRY.register()
class SpikeFrontEndModel(SpikeSRModel):
    """The training stage of a learned spike front end (RSIR, Spk2ImgNet): spikes in, the defocused image out.

    Its target is the batch's ``blurred`` image (the defocused photograph the spikes were simulated from, stored by
    the LMDB preparation; ``SpikeLMDBDataset`` returns it when the LMDB has it), not the sharp ``gt``: the stage
    reconstructs what the sensor saw, and the cascade's back end deblurs it. Validation therefore scores against the
    defocused image too; ``scripts/benchmark.py`` scores the stage alone against the sharp ground truth, as every
    method.

    Options: ``network_g`` (the front end's arch), ``train.pixel_opt`` (e.g. ``L1Loss`` or ``MSELoss``),
    ``train.grad_clip_norm``, ``front_end: {fpn: true}`` to pass the FPN factor to a network that takes ``gamma``.
    """

    def __init__(self, opt: Dict[str, Any]) -> None:
        front_end = dict(opt.get('front_end') or {})
        unknown = sorted(set(front_end) - {'fpn'})
        if unknown or not isinstance(front_end.get('fpn', False), bool):
            raise ValueError(f'SpikeFrontEndModel: front_end takes only {{fpn: true|false}}, found {front_end!r}')
        self.fpn = bool(front_end.get('fpn', False))
        super().__init__(opt)

    def init_training_settings(self) -> None:
        super().init_training_settings()
        self.grad_clip_norm = self.opt['train'].get('grad_clip_norm')

    def feed_data(self, data: Dict[str, Any]) -> None:
        """``lq`` spikes (centre ``min(lq_len)`` frames), ``gamma``; the target ``gt`` is ``blurred``.

        Raises:
            ValueError: A training batch without ``blurred`` (an LMDB prepared before the record existed).
        """
        self.lq = crop_center_frames(data['lq'], data.get('lq_len')).to(self.device)
        self.gamma = data['gamma'].to(self.device).float() if data.get('gamma') is not None else None
        if data.get('blurred') is not None:
            self.gt = data['blurred'].to(self.device)
        elif self.is_train and self.net_g.training:
            raise ValueError('SpikeFrontEndModel trains on the defocused image (the batch key "blurred"), which this '
                             'data set does not provide: prepare the LMDB again with scripts/prepare_dpdd.py (it now '
                             'stores <key>/blurred), and leave the dataset option blurred at auto or true')
        elif 'gt' in data:
            self.gt = data['gt'].to(self.device)

    def optimize_parameters(self, current_iter: int) -> None:
        self.optimizer_g.zero_grad()
        with self.autocast():
            self.output = run_spike_network(self.net_g, self.lq, self.gamma, self.fpn)
            loss_dict = OrderedDict()
            if self.cri_pix:
                loss_dict['l_pix'] = self.cri_pix(self.output, self.gt)
        self.apply_losses(loss_dict)

    def test(self) -> None:
        """The front end's image, without gradients (EMA network when there is one)."""
        self.output = self.evaluate(lambda net: run_spike_network(net, self.lq, self.gamma, self.fpn))
