"""A wider DeSpikeNet that starts as a trained narrow one (function-preserving widening, as Net2WiderNet).

Every feature channel c of the narrow network becomes k channels of the wide one (wide channel n copies narrow channel
n // k, so a concatenation or ``chunk`` of C-channel maps keeps its halves and an attention head keeps its channels).
A layer that reads the features sums over them, so its weights on the k copies share the narrow weight: fractions
that add up to one, drawn at random so that the copies receive different gradients and grow apart in training
(equal shares would keep them identical forever). LayerNorm over channels sees every value k times, so its mean and
variance do not change; attention logits q·k_j sum over k times the channels, so the query projection is scaled by
1/√k to keep q·k_j / √d as it was. The result computes the narrow network's function up to rounding, which
:func:`widen_network` checks on a probe stream.

    python -m despike_basicsr.training.widen --weights despike_basicsr/weights/despike_general.pth \\
        --factor 2 --out results/training/capacity/start_wide.pth
"""
import argparse
import math
import os
import os.path as osp
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import Tensor, nn

from despike_basicsr.archs.despike_blocks import CandidateAttentionFusion, PlainQKVFusion


class WideningError(ValueError):
    """A parameter whose shapes in the two networks are not related by the widening factor, or a wide network that
    does not compute the narrow one's function."""


def widened_tensor(narrow: Tensor, wide_shape: Sequence[int], factor: int, shares: Dict[int, Tensor],
                   name: str = 'parameter') -> Tensor:
    """W'[n₀, n₁, …] = W[n₀ // k, n₁ // k, …] · s(n₁): copies along every widened dimension, shares along the input one.

    Dimension 0 (outputs, norm and bias entries) is copied; dimension 1 (the inputs a convolution sums over) is
    copied and multiplied by ``shares[n₁]``, which sum to 1 over the k copies of a narrow channel, so the sum is
    unchanged. Other dimensions (kernel taps) must not change.

    Args:
        narrow: The narrow network's tensor.
        wide_shape: The wide network's shape of it.
        factor: k.
        shares: ``{narrow input channels: (k · channels,) shares}``: one draw per input width, reused by every layer
            with that many inputs.
        name: For errors.

    Returns:
        The wide tensor.
    """
    if len(narrow.shape) != len(wide_shape):
        raise WideningError(f'{name}: {tuple(narrow.shape)} in the narrow network, {tuple(wide_shape)} in the wide')
    wide = narrow
    for dim, (small, large) in enumerate(zip(narrow.shape, wide_shape)):
        if large == small:
            continue
        if large != factor * small or dim > 1:
            raise WideningError(f'{name}: dimension {dim} is {small} in the narrow network and {large} in the wide '
                                f'one; only dimensions 0 and 1 may grow, by the factor {factor}')
        wide = wide.repeat_interleave(factor, dim=dim)
        if dim == 1:
            view = [1] * wide.dim()
            view[1] = large
            wide = wide * shares[small].to(wide.dtype).view(view)
    return wide.clone()


def copy_shares(channels: int, factor: int, generator: torch.Generator, spread: float = 0.4) -> Tensor:
    """Random fractions, k per narrow channel, each group summing to one (all 1/k at ``spread`` 0).

    Args:
        channels: Narrow channel count.
        factor: k.
        generator: Random source (deterministic given its seed).
        spread: Draws lie in [1 − spread, 1 + spread] before the group is normalised.

    Returns:
        ``(channels · k,)`` shares, grouped by narrow channel.
    """
    raw = 1.0 + spread * (2.0 * torch.rand(channels, factor, generator=generator, dtype=torch.float64) - 1.0)
    return (raw / raw.sum(1, keepdim=True)).reshape(-1).float()


def widen_network(narrow: nn.Module, wide: nn.Module, factor: int, seed: int = 0, spread: float = 0.4,
                  probe: Optional[Tensor] = None, tolerance: float = 1e-4) -> float:
    """Load ``wide`` with the narrow network's function (:func:`widened_tensor` for every parameter and buffer).

    Args:
        narrow: The trained network.
        wide: The same architecture built with ``num_feat`` k times larger (changed in place).
        factor: k ≥ 1.
        seed: Seed of the shares.
        spread: Spread of the shares (0: equal shares, the copies never grow apart).
        probe: ``(B, T, H, W)`` stream on which both networks are run; default a random one of 192 steps.
        tolerance: Largest output difference accepted, as a fraction of the narrow output's range.

    Returns:
        The largest absolute output difference on the probe (both networks are left in eval mode).

    Raises:
        WideningError: Shapes not related by k, or outputs further apart than ``tolerance``.
    """
    if factor < 1:
        raise WideningError(f'the widening factor must be a positive integer, got {factor}')
    generator = torch.Generator().manual_seed(seed)
    shares: Dict[int, Tensor] = {}
    narrow_state, wide_state = narrow.state_dict(), wide.state_dict()
    unmatched = sorted(set(wide_state) ^ set(narrow_state))
    if unmatched:
        raise WideningError(f'the networks differ in more than width: {", ".join(unmatched[:5])}')
    for key, value in narrow_state.items():
        if value.dim() > 1 and wide_state[key].shape[1] != value.shape[1] and value.shape[1] not in shares:
            shares[value.shape[1]] = copy_shares(value.shape[1], factor, generator, spread)
    new_state = {key: widened_tensor(value, wide_state[key].shape, factor, shares, key)
                 for key, value in narrow_state.items()}
    wide.load_state_dict(new_state)
    for module in wide.modules():
        if isinstance(module, (CandidateAttentionFusion, PlainQKVFusion)):  # q·k_j sums k times the channels now
            with torch.no_grad():
                module.to_q.weight.mul_(1.0 / math.sqrt(factor))
                module.to_q.bias.mul_(1.0 / math.sqrt(factor))
    if probe is None:
        probe = (torch.rand(1, 192, 32, 32, generator=generator) < 0.3).float()
    narrow.eval()
    wide.eval()
    with torch.no_grad():
        expected, got = narrow(probe), wide(probe)
    difference = (expected - got).abs().max().item()
    scale = max((expected.max() - expected.min()).item(), 1e-6)
    if not difference <= tolerance * scale:
        raise WideningError(f'the widened network differs from the narrow one by {difference:.3g} on a probe stream '
                            f'(output range {scale:.3g}); this architecture has a layer widening does not cover')
    return difference


def widen_checkpoint(weights: str, out: str, factor: int = 2, seed: int = 0, param_key: str = 'params_ema',
                     spread: float = 0.4) -> Dict[str, Any]:
    """Write a checkpoint of the network in ``weights`` made ``factor`` times wider, computing the same function.

    Args:
        weights: A checkpoint that stores ``network_g`` (every checkpoint this project writes does).
        out: Path of the new checkpoint (``params`` and ``params_ema``, ``network_g`` with the new ``num_feat``);
            never an existing file.
        factor: k.
        seed: Seed of the shares.
        param_key: Which weights to widen (``params`` when the checkpoint has no ``params_ema``).
        spread: Spread of the shares.

    Returns:
        The new checkpoint's ``network_g``.
    """
    import despike_basicsr
    despike_basicsr.register()  # compat before basicsr loads; fills BasicSR's registries
    from basicsr.archs import build_network

    if osp.exists(out):
        raise FileExistsError(f'{out} exists; widening never overwrites a checkpoint')
    checkpoint = torch.load(weights, map_location='cpu', weights_only=False)
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get('network_g'), dict):
        raise WideningError(f'{weights}: no network_g stored in the checkpoint; widening needs to know the network')
    key = param_key if param_key in checkpoint else 'params'
    if key not in checkpoint:
        raise WideningError(f'{weights}: neither {param_key!r} nor \'params\' in the checkpoint')
    network_opt = dict(checkpoint['network_g'])
    narrow = build_network(dict(network_opt))
    narrow.load_state_dict(checkpoint[key])
    wide_opt = dict(network_opt, num_feat=int(network_opt['num_feat']) * factor)
    wide = build_network(dict(wide_opt))
    difference = widen_network(narrow, wide, factor, seed=seed, spread=spread)
    state = {name: value.detach().clone() for name, value in wide.state_dict().items()}
    os.makedirs(osp.dirname(osp.abspath(out)), exist_ok=True)
    torch.save({'params': state, 'params_ema': state, 'network_g': wide_opt,
                'meta': {'source': weights, 'param_key': key, 'factor': factor, 'seed': seed, 'spread': spread,
                         'probe_max_difference': difference}}, out)
    return wide_opt


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--weights', required=True, help='checkpoint of the narrow network (stores network_g)')
    parser.add_argument('--out', required=True, help='new checkpoint (must not exist)')
    parser.add_argument('--factor', type=int, default=2, help='channels per narrow channel (default 2)')
    parser.add_argument('--seed', type=int, default=0, help='seed of the copies\' shares (default 0)')
    parser.add_argument('--spread', type=float, default=0.4, help='spread of the shares (default 0.4)')
    args = parser.parse_args(argv)
    wide_opt = widen_checkpoint(args.weights, args.out, args.factor, args.seed, spread=args.spread)
    print(f'[widen] {args.weights} -> {args.out}: num_feat {wide_opt["num_feat"]}, same function on a probe stream')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
