"""Cascade baseline: a classical spike reconstruction (TFP or TFI) followed by a frame-domain deblurring network.

This is the "reconstruct, then deblur" pipeline DeSpike is compared with. The front end has no parameters; only the
back end (any registered arch from ``network_g`` whose forward returns a coarse-to-fine list, or a single image) is
trained, with that arch's own loss: ``pixel_opt`` (MultiScaleMSELoss) plus an optional ``fft_opt`` on the finest output;
``train.grad_clip_norm`` clips gradients as DeSpikeModel does; ``train.amp`` / ``compile`` / ``channels_last`` are the
shared switches of :mod:`despike_basicsr.models.spike_base`.

Options (besides BasicSR's usual ones)::

    front_end: {type: tfp, window: 41, eta: 1.0, threshold: 2.0}   # or {type: tfi, eta: 1.0, threshold: 2.0}

``front_end.fpn: true`` multiplies the front end's rates by the batch's FPN factor ``gamma`` (the dataset's
``fpn.npz``), the compensation DeSpike's integration applies; the default ``false`` is the published cascades, which
have none.
"""
from collections import OrderedDict
from typing import Any, Dict, List, Optional, Sequence, Union

import torch
from basicsr.losses import build_loss
from basicsr.utils.registry import MODEL_REGISTRY
from torch import Tensor

from despike_basicsr.models.spike_base import SpikeSRModel, crop_center_frames
from despike_basicsr.spike.reconstruct import classical_display

FRONT_END_TYPES = ('tfp', 'tfi')


def parse_front_end(options: Dict[str, Any]) -> Dict[str, Any]:
    """Validate the ``front_end`` options and fill the defaults (window 41, eta 1, threshold 2, gamma 2.2, no fpn).

    Raises:
        ValueError: Naming the option, what was expected and what was found.
    """
    if not isinstance(options, dict) or 'type' not in options:
        raise ValueError(f"CascadeModel needs a 'front_end' option like {{type: tfp, window: 41}}, found {options!r}")
    known = {'type', 'window', 'eta', 'threshold', 'gamma', 'fpn'}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f'front_end: unknown option(s) {unknown}; expected some of {sorted(known)}')
    parsed = {'window': 41, 'eta': 1.0, 'threshold': 2.0, 'gamma': 2.2, 'fpn': False, **options}
    parsed['type'] = str(parsed['type']).lower()
    if parsed['type'] not in FRONT_END_TYPES:
        raise ValueError(f"front_end.type must be one of {FRONT_END_TYPES}, found {options['type']!r}")
    if not isinstance(parsed['window'], int) or parsed['window'] < 1:
        raise ValueError(f"front_end.window must be a positive integer (frames), found {parsed['window']!r}")
    for name in ('eta', 'threshold', 'gamma'):
        if not isinstance(parsed[name], (int, float)) or parsed[name] <= 0:
            raise ValueError(f'front_end.{name} must be a positive number, found {parsed[name]!r}')
    if not isinstance(parsed['fpn'], bool):
        raise ValueError(f"front_end.fpn must be true or false, found {parsed['fpn']!r}")
    return parsed


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
        super().__init__(opt)

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
        spikes = crop_center_frames(spikes, data.get('lq_len'))
        gamma = data.get('gamma')
        with torch.no_grad():
            self.lq = classical_reconstruction(spikes.to(self.device), self.front_end,
                                               gamma.to(self.device).float() if gamma is not None else None)
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
