"""Mixed precision on this machine: one training step of each DPDD-protocol network in float32 and under autocast
(``scripts/bench_amp.py``).

Whether ``train.amp: bf16`` pays depends on the CPU: with AMX or AVX-512 BF16, oneDNN runs bf16 convolutions several
times faster than float32; without them bf16 is emulated and slower. This measures it per network, on the network and
batch of the protocol's options file (``network_g``, ``batch_size_per_gpu``, ``gt_size``, the shortest
``temporal_len``), and checks that the two precisions train the same network:

- time: two copies of the network from one initialisation, each with its own Adam, take turns step by step
  (:func:`~despike_basicsr.training.profiling.interleaved_latency`), so a change of the machine's load falls on both;
  the ratio is the median of the per-round ratios (autocast over float32), with its range;
- agreement: from identical weights and one batch, the cosine between the float32 and the autocast gradients (all
  parameters as one vector), their norm ratio, and the largest output difference over the output's spread.

A step is forward, L1 loss on the final output against a random target (in float32), backward, Adam step; the real
trainings add their losses, EMA and data loading, so the end-to-end gain is smaller where those weigh.
"""
import copy
import statistics
from os import path as osp
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from despike_basicsr.options_file import OptionsError, load_options_file, read_network_options
from despike_basicsr.training.profiling import interleaved_latency

#: Row -> the protocol's options file that defines its network and batch (cascade rows: the deblurring network).
PROTOCOL_OPTIONS: Dict[str, str] = {
    'despike': 'options/dpdd_cpu/train_despike.yml',
    'rsir': 'options/dpdd_cpu/train_rsir.yml',
    'spk2imgnet': 'options/dpdd_cpu/train_spk2imgnet.yml',
    'gkmnet': 'options/dpdd_cpu/train_gkmnet_tfp.yml',
    'nrknet': 'options/dpdd_cpu/train_nrknet_tfp.yml',
}
AMP_DTYPES = {'bf16': torch.bfloat16, 'fp16': torch.float16}


def final_output(output: Any) -> Tensor:
    """The image a network returns: itself, or the last (finest) of a multi-scale list."""
    return output[-1] if isinstance(output, (list, tuple)) else output


def protocol_batch(options_path: str, batch: Optional[int] = None, size: Optional[int] = None,
                   steps: Optional[int] = None, seed: int = 1) -> Dict[str, Any]:
    """The training input of an options file, random: spikes ``(B, T, S, S)`` uint8 for a spike network, a frame
    ``(B, 1, S, S)`` for a cascade's deblurring network (``model_type: CascadeModel``), and a target ``(B, 1, S, S)``.

    Args:
        options_path: The options file (its ``datasets.train`` gives the defaults).
        batch, size, steps: Override ``batch_size_per_gpu``, ``gt_size`` and the stream length (default the shortest
            ``temporal_len``).
        seed: Seed of the random input.
    """
    opt = load_options_file(options_path)
    train = opt.get('datasets', {}).get('train')
    if not isinstance(train, dict):
        raise OptionsError(f'{options_path}: no datasets.train section to take the batch from')
    batch = batch or int(train.get('batch_size_per_gpu', 1))
    size = size or int(train.get('gt_size', 96))
    length = train.get('temporal_len', 192)
    steps = steps or int(min(length) if isinstance(length, (list, tuple)) else length)
    generator = torch.Generator().manual_seed(seed)
    if opt.get('model_type') == 'CascadeModel':
        inputs = torch.rand(batch, 1, size, size, generator=generator)
    else:
        inputs = (torch.rand(batch, steps, size, size, generator=generator) < 0.3).to(torch.uint8)
    return {'input': inputs, 'target': torch.rand(batch, 1, size, size, generator=generator)}


def step_loss(net: nn.Module, batch: Dict[str, Tensor], dtype: Optional[torch.dtype]) -> Tensor:
    """L1 loss of one forward, the forward under autocast in ``dtype`` (``None``: float32), the loss in float32."""
    with torch.autocast(batch['input'].device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        output = final_output(net(batch['input']))
    return F.l1_loss(output.float(), batch['target'])


def gradient_agreement(net: nn.Module, batch: Dict[str, Tensor], dtype: Optional[torch.dtype]) -> Dict[str, float]:
    """Float32 against autocast from the same weights and batch: gradient cosine and norm ratio, output difference.

    Returns:
        ``grad_cosine``, ``grad_norm_ratio`` (autocast over float32), ``output_max_diff_over_std`` (largest absolute
        output difference over the float32 output's standard deviation).
    """
    grads, outputs = [], []
    for precision in (None, dtype):
        model = copy.deepcopy(net)
        model.zero_grad(set_to_none=True)
        step_loss(model, batch, precision).backward()
        grads.append(torch.cat([p.grad.flatten().double() for p in model.parameters() if p.grad is not None]))
        with torch.no_grad(), torch.autocast(batch['input'].device.type, dtype=dtype or torch.bfloat16,
                                             enabled=precision is not None):
            outputs.append(final_output(model(batch['input'])).double())
    spread = outputs[0].std().clamp_min(1e-12)
    return {
        'grad_cosine': float(F.cosine_similarity(grads[0], grads[1], dim=0)),
        'grad_norm_ratio': float(grads[1].norm() / grads[0].norm().clamp_min(1e-30)),
        'output_max_diff_over_std': float((outputs[1] - outputs[0]).abs().max() / spread),
    }


def measure_row(options_path: str, amp: str = 'bf16', warmup: int = 1, repeats: int = 2,
                batch: Optional[int] = None, size: Optional[int] = None, steps: Optional[int] = None,
                seed: int = 0) -> Dict[str, Any]:
    """Training-step seconds in float32 and under ``amp`` autocast, and their agreement, for one options file.

    Returns:
        ``network``, ``params``, ``input_shape``, ``fp32_s`` / ``amp_s`` (every round), ``fp32_cpu_s`` /
        ``amp_cpu_s``, ``ratio`` (median per-round amp / fp32 wall seconds), ``ratio_range``, ``cpu_ratio`` and the
        :func:`gradient_agreement` figures.
    """
    # imported here, registering first: the compat shims must precede basicsr's own imports
    import despike_basicsr
    despike_basicsr.register()
    from basicsr.archs import build_network
    if amp not in AMP_DTYPES:
        raise ValueError(f'amp must be one of {sorted(AMP_DTYPES)}, got {amp!r}')
    dtype = AMP_DTYPES[amp]
    network_opt = read_network_options(options_path)
    torch.manual_seed(seed)
    net = build_network(dict(network_opt)).train()
    data = protocol_batch(options_path, batch, size, steps)
    agreement = gradient_agreement(net, data, dtype)

    def trainer(precision: Optional[torch.dtype]):
        model = copy.deepcopy(net)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

        def step(batch_: Dict[str, Tensor]) -> None:
            optimizer.zero_grad(set_to_none=True)
            step_loss(model, batch_, precision).backward()
            optimizer.step()

        return step

    cpu: Dict[str, List[float]] = {}
    wall = interleaved_latency({'fp32': trainer(None), 'amp': trainer(dtype)}, data, data['input'].device, warmup,
                               repeats, cpu_times=cpu, inference=False)
    ratios = [a / f for a, f in zip(wall['amp'], wall['fp32'])]
    return {
        'options': options_path,
        'network': network_opt['type'],
        'params': sum(p.numel() for p in net.parameters()),
        'input_shape': list(data['input'].shape),
        'amp': amp,
        'fp32_s': wall['fp32'],
        'amp_s': wall['amp'],
        'fp32_cpu_s': cpu['fp32'],
        'amp_cpu_s': cpu['amp'],
        'ratio': statistics.median(ratios),
        'ratio_range': [min(ratios), max(ratios)],
        'cpu_ratio': statistics.median(a / f for a, f in zip(cpu['amp'], cpu['fp32'])),
        **agreement,
    }


def markdown_table(rows: Sequence[Dict[str, Any]]) -> List[str]:
    """One line per network: parameters, input, median seconds per step in each precision, ratios, agreement."""
    amp = rows[0]['amp'] if rows else 'amp'
    lines = [f'| network | params | input | fp32 s/step | {amp} s/step | {amp} / fp32 (range) | CPU-time ratio | '
             'gradient cosine | gradient norm ratio | max output diff / std |',
             '| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |']
    for r in rows:
        shape = 'x'.join(map(str, r['input_shape']))
        lines.append(
            f"| {r['network']} ({osp.basename(r['options'])}) | {r['params']:,} | {shape} "
            f"| {statistics.median(r['fp32_s']):.3f} | {statistics.median(r['amp_s']):.3f} | {r['ratio']:.2f} "
            f"({r['ratio_range'][0]:.2f}-{r['ratio_range'][1]:.2f}) | {r['cpu_ratio']:.2f} | {r['grad_cosine']:.5f} "
            f"| {r['grad_norm_ratio']:.4f} | {r['output_max_diff_over_std']:.3g} |")
    return lines
