"""What DeSpikeModel and CascadeModel share: variable-length batches, the optimiser step, and evaluation."""
from typing import Callable, Dict, Optional, Sequence, Union

import torch
from basicsr.models.sr_model import SRModel
from torch import Tensor


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
    """SRModel plus the steps both spike models take the same way (not registered; subclass it)."""

    grad_clip_norm: Optional[float] = None

    def apply_losses(self, loss_dict: Dict[str, Tensor]) -> None:
        """Backpropagate the sum of ``loss_dict``, clip (``train.grad_clip_norm``), step, log, update the EMA."""
        if not loss_dict:
            raise ValueError('no loss term is configured: set train.pixel_opt (or fft_opt / lpips_opt) in the options')
        sum(loss_dict.values()).backward()
        if self.grad_clip_norm:
            torch.nn.utils.clip_grad_norm_(self.net_g.parameters(), self.grad_clip_norm)
        self.optimizer_g.step()
        self.log_dict = self.reduce_loss_dict(loss_dict)
        if self.ema_decay > 0:
            self.model_ema(decay=self.ema_decay)

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
