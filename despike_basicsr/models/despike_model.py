"""DeSpikeModel: trains and evaluates DeSpikeNet in BasicSR's loop.

L = λ1 Σ_{i,s} β_{i,s} MSE_{i,s} (``pixel_opt``, logged as ``l_grid``) + λ2 L_FFT (``fft_opt``, ``l_fft``)
  + λ3 L_LPIPS (``lpips_opt``, ``l_lpips``) + λ4 L_grad (``grad_opt``, ``l_grad``: image-gradient L1)
  + λ5 L_harm (``l_harm``: :func:`no_harm_penalty`, λ5 = ``train.harm_weight``) + λ6 L_SSIM (``ssim_opt``,
  ``l_ssim``: 1 − SSIM) + λ7 L_tone (``tone_opt``, ``l_tone``: LowFrequencyToneLoss on the items flagged
  ``photometric``); each term is optional and its λ is the ``loss_weight`` of its options.
"""
from collections import OrderedDict
from typing import Any, Dict, List, Optional

import torch
from basicsr.losses import build_loss
from basicsr.utils.registry import MODEL_REGISTRY
from torch import Tensor
from torch.nn import functional as F

from despike_basicsr.models.spike_base import SpikeSRModel, crop_center_frames

_AUX_SCALES = ('final', 'all')


def no_harm_penalty(output: Tensor, plain: Tensor, target: Tensor, eps: float = 1e-6) -> Tensor:
    """L_harm = mean_b [ mean_x max((Rec − GT)² − (P − GT)², 0) / (mean_x (P − GT)² + ε) ]: the squared error the
    correction adds over the plain reconstruction P (the window mix, α = 0), where it adds any, relative to P's own
    error per sample, so a 48 dB in-focus crop whose correction costs 1 dB weighs as much as a 25 dB one.

    ``plain`` is a constant (no gradient): the penalty moves the correction, not the mix.
    """
    plain = plain.detach()
    plain_error = (plain - target).pow(2)
    excess = torch.relu((output - target).pow(2) - plain_error)
    return (excess.flatten(1).mean(1) / (plain_error.flatten(1).mean(1) + eps)).mean()


@MODEL_REGISTRY.register()
class DeSpikeModel(SpikeSRModel):
    """BasicSR model for DeSpikeNet (single-channel output, variable-length spike streams, optional FPN γ).

    Options read beyond SRModel's: ``train.pixel_opt`` (HierarchicalMSELoss), ``train.fft_opt``, ``train.lpips_opt``,
    ``train.grad_opt``, ``train.ssim_opt``, their ``train.<name>_scales`` (``'final'``: the final image only,
    default; ``'all'``: every spatial scale of the last temporal scale against the downsampled ground truth) and
    ``train.grad_clip_norm``.
    """

    def init_training_settings(self) -> None:
        self.net_g.train()
        train_opt = self.opt['train']
        self.setup_ema()

        self.cri_grid = self._build_optional_loss(train_opt.get('pixel_opt'))
        self.cri_fft = self._build_optional_loss(train_opt.get('fft_opt'))
        self.cri_lpips = self._build_optional_loss(train_opt.get('lpips_opt'))
        self.cri_grad = self._build_optional_loss(train_opt.get('grad_opt'))
        self.cri_ssim = self._build_optional_loss(train_opt.get('ssim_opt'))
        self.cri_tone = self._build_optional_loss(train_opt.get('tone_opt'))
        losses = (self.cri_grid, self.cri_fft, self.cri_lpips, self.cri_grad, self.cri_ssim, self.cri_tone)
        if all(c is None for c in losses):
            raise ValueError('DeSpikeModel needs at least one loss: train.pixel_opt, train.fft_opt, train.lpips_opt, '
                             'train.grad_opt, train.ssim_opt or train.tone_opt')
        self.fft_scales = self._check_scales('fft_scales', train_opt.get('fft_scales', 'final'))
        self.lpips_scales = self._check_scales('lpips_scales', train_opt.get('lpips_scales', 'final'))
        self.grad_scales = self._check_scales('grad_scales', train_opt.get('grad_scales', 'final'))
        self.ssim_scales = self._check_scales('ssim_scales', train_opt.get('ssim_scales', 'final'))
        self.grad_clip_norm = train_opt.get('grad_clip_norm')
        self.harm_weight = float(train_opt.get('harm_weight', 0.0))
        if self.harm_weight and not getattr(self.get_bare_model(self.net_g), 'base_windows', None):
            raise ValueError('train.harm_weight compares the output with the window mix: network_g needs base_windows')

        self.setup_optimizers()
        self.setup_schedulers()

    def _build_optional_loss(self, loss_opt: Optional[Dict[str, Any]]) -> Optional[torch.nn.Module]:
        return build_loss(loss_opt).to(self.device) if loss_opt else None

    @staticmethod
    def _check_scales(name: str, value: str) -> str:
        if value not in _AUX_SCALES:
            raise ValueError(f'train.{name} must be one of {_AUX_SCALES}, got {value!r}')
        return value

    def feed_data(self, data: Dict[str, Any]) -> None:
        """``lq`` ``(B, T, H, W)`` cropped to the centre ``min(lq_len)`` frames; ``gt``, ``gamma``,
        ``rate_per_unit`` (the simulated exposure, see :meth:`exposure_correction`) and ``photometric`` (the
        per-item weight of ``tone_opt``; absent: every item) when given."""
        self.lq = crop_center_frames(data['lq'], data.get('lq_len')).to(self.device)
        self.gamma = data['gamma'].to(self.device) if data.get('gamma') is not None else None
        if 'gt' in data:
            self.gt = data['gt'].to(self.device)
        rate = data.get('rate_per_unit')
        self.rate_per_unit = None if rate is None else torch.as_tensor(rate, dtype=torch.float32, device=self.device)
        flag = data.get('photometric')
        self.photometric = None if flag is None else torch.as_tensor(flag, dtype=torch.float32, device=self.device)

    def exposure_correction(self) -> Optional[Tensor]:
        """``(B, 1, 1, 1)`` factors e^(−1/γ) that bring an output to the ground truth's display scale, or ``None``.

        A simulated item fired at ``rate_per_unit`` spikes per step per unit intensity; relative to the network's
        reference camera its exposure is e = rate_per_unit / ρ_ref, and the network (which cannot know e) shows the
        scene e^(1/γ) times brighter than the ground truth, as that camera would. Losses and validation compare
        output·e^(−1/γ) with the ground truth. Items without ``rate_per_unit`` (LMDB data of the reference camera) and
        networks without an exposure model need no correction.
        """
        net = self.get_bare_model(self.net_g)
        if self.rate_per_unit is None or not getattr(net, 'exposure_norm', False):
            return None
        exposure = self.rate_per_unit.reshape(-1, 1, 1, 1) / net.reference_rate
        return exposure.pow(-1.0 / net.display_gamma)

    def _aux_loss(self, criterion: torch.nn.Module, scales: str, grid: List[List[Tensor]]) -> Tensor:
        """A loss on the final image, or summed over every spatial scale of the last temporal scale."""
        if scales == 'final':
            return criterion(self.output, self.gt)
        total = 0
        for output in grid[-1]:
            target = self.gt if output.shape == self.gt.shape else F.interpolate(
                self.gt, size=output.shape[-2:], mode='area')
            total = total + criterion(output, target)
        return total

    def optimize_parameters(self, current_iter: int) -> None:
        self.optimizer_g.zero_grad()
        with self.autocast():
            self.output, grid = self.net_g(self.lq, self.gamma, return_intermediates=True)
            correction = self.exposure_correction()
            if correction is not None:
                self.output = self.output * correction
                grid = [[image * correction for image in row] for row in grid]

            loss_dict = OrderedDict()
            if self.cri_grid is not None:
                loss_dict['l_grid'] = self.cri_grid(grid, self.gt)
            if self.cri_fft is not None:
                loss_dict['l_fft'] = self._aux_loss(self.cri_fft, self.fft_scales, grid)
            if self.cri_lpips is not None:
                loss_dict['l_lpips'] = self._aux_loss(self.cri_lpips, self.lpips_scales, grid)
            if self.cri_grad is not None:
                loss_dict['l_grad'] = self._aux_loss(self.cri_grad, self.grad_scales, grid)
            if self.cri_ssim is not None:
                loss_dict['l_ssim'] = self._aux_loss(self.cri_ssim, self.ssim_scales, grid)
            if self.cri_tone is not None:
                loss_dict['l_tone'] = self.cri_tone(self.output, self.gt, weight=self.photometric)
            if self.harm_weight:
                loss_dict['l_harm'] = self.harm_weight * no_harm_penalty(self.output, self.window_mix(correction),
                                                                         self.gt)
        self.apply_losses(loss_dict)

    @torch.no_grad()
    def window_mix(self, correction: Optional[Tensor]) -> Tensor:
        """The network's output with the correction off (correction strength 0), at the ground truth's scale."""
        net = self.get_bare_model(self.net_g)
        strength, net.correction_strength = net.correction_strength, 0.0
        try:
            mix = self.net_g(self.lq, self.gamma)
        finally:
            net.correction_strength = strength
        return mix if correction is None else mix * correction

    def test(self) -> None:
        """Reconstruct ``self.lq`` with :meth:`evaluation_network` (restored to its mode after)."""
        self.output = self.evaluate(lambda net: net(self.lq, getattr(self, 'gamma', None)))
        correction = self.exposure_correction() if hasattr(self, 'rate_per_unit') else None
        if correction is not None:
            self.output = self.output * correction
