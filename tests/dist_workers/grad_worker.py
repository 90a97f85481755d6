"""One or more training steps of a BasicSR model on a fixed, seeded batch; writes gradients and parameters to a file.

Launched two ways by ``tests/test_distributed.py``:

- under ``torchrun --nproc_per_node=W`` (``RANK``/``WORLD_SIZE`` set): ``opt['dist'] = True``, the process group is
  started through BasicSR's ``init_dist('pytorch')`` (patched by ``despike_basicsr.compat``), the network is wrapped in
  DDP by ``BaseModel.model_to_device``, and rank ``r`` trains on samples ``[r·b, (r+1)·b)`` of every batch;
- as a plain process: ``opt['dist'] = False`` and it trains on all ``W·b`` samples.

Every process writes ``<out>/rank<r>.pt`` (``<out>/single.pt`` without torchrun) holding, per step, the gradients left
by ``optimize_parameters`` and the parameters after the optimizer step, keyed by the bare network's parameter names.
``--control`` (single process only) also writes ``<out>/control.pt``: the same steps on the first ``b`` samples only,
which must *differ* from the full batch (a negative control, so the comparison cannot pass vacuously).
"""
import argparse
import os
import sys
from typing import Any, Dict, List

import torch

import despike_basicsr

despike_basicsr.register()  # compat patches before basicsr loads; registers our archs and models
from basicsr.models import build_model  # noqa: E402
from basicsr.utils.dist_util import get_dist_info, init_dist  # noqa: E402

SR_NETWORK = {'type': 'SRVGGNetCompact', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 8, 'num_conv': 2, 'upscale': 1,
              'act_type': 'prelu'}
DESPIKE_NETWORK = {'type': 'DeSpikeNet', 'num_feat': 8, 'windows': [4, 8], 'num_kernels': 2, 'kernel_size': 3,
                   'num_scales': 2, 'num_blocks': 1, 'num_heads': 2}
SPIKE_LEN = 8
SIZE = 16
DATA_SEED = 1234
INIT_SEED = 7


def make_options(kind: str, dist: bool, rank: int, world_size: int, use_cuda: bool) -> Dict[str, Any]:
    """BasicSR options for a tiny model of ``kind`` (``sr``: SRModel + SRVGGNetCompact, ``despike``: DeSpikeModel)."""
    opt: Dict[str, Any] = {
        'name': f'grad_equiv_{kind}',
        'model_type': 'SRModel' if kind == 'sr' else 'DeSpikeModel',
        'scale': 1,
        'num_gpu': 1 if use_cuda else 0,
        'is_train': True,
        'dist': dist,
        'rank': rank,
        'world_size': world_size,
        'manual_seed': INIT_SEED,
        'network_g': dict(SR_NETWORK if kind == 'sr' else DESPIKE_NETWORK),
        'path': {'pretrain_network_g': None, 'strict_load_g': True, 'resume_state': None},
        'train': {
            'optim_g': {'type': 'Adam', 'lr': 1e-2, 'betas': [0.9, 0.99]},
            'scheduler': {'type': 'MultiStepLR', 'milestones': [1000], 'gamma': 0.5},
            'total_iter': 1000,
            'warmup_iter': -1,
            'pixel_opt': {'type': 'L1Loss', 'loss_weight': 1.0, 'reduction': 'mean'},
        },
    }
    if kind == 'despike':  # the demo options' losses, scaled down: hierarchical MSE + FFT, gradient clipping
        opt['train'].pop('pixel_opt')
        opt['train'].update(
            pixel_opt={'type': 'HierarchicalMSELoss', 'loss_weight': 1.0, 'temporal_weights': [0.5, 1.0],
                       'scale_weights': [1.0, 1.0]},
            fft_opt={'type': 'FFTLoss', 'loss_weight': 0.2, 'reduction': 'mean', 'norm': 'ortho'},
            grad_clip_norm=0.5)
        # the attention key bias has an identically zero gradient (softmax ignores a shift shared by all keys), so in
        # float32 its gradient is rounding noise, which Adam's first steps (update ≈ lr·g/(|g|+eps)) would blow up to
        # ±lr; a larger eps keeps that noise at noise level while real gradients still get Adam steps
        opt['train']['optim_g']['eps'] = 1e-4
    return opt


def make_batch(kind: str, step: int, total: int, dtype: torch.dtype) -> Dict[str, torch.Tensor]:
    """The fixed batch of ``total`` samples for ``step`` (the same on every process)."""
    gen = torch.Generator().manual_seed(DATA_SEED + step)
    if kind == 'sr':
        lq = torch.rand(total, 3, SIZE, SIZE, generator=gen, dtype=dtype)
        gt = torch.rand(total, 3, SIZE, SIZE, generator=gen, dtype=dtype)
        return {'lq': lq, 'gt': gt}
    spikes = (torch.rand(total, SPIKE_LEN, SIZE, SIZE, generator=gen) < 0.3).to(dtype)
    gt = torch.rand(total, 1, SIZE, SIZE, generator=gen, dtype=dtype)
    # one stream length for all samples: feed_data crops a batch to its shortest lq_len, which per process would
    # otherwise differ from the full batch's
    return {'lq': spikes, 'gt': gt, 'lq_len': torch.full((total, ), SPIKE_LEN, dtype=torch.long)}


def slice_batch(batch: Dict[str, torch.Tensor], start: int, stop: int) -> Dict[str, torch.Tensor]:
    """Samples ``[start, stop)`` of every entry."""
    return {key: value[start:stop] for key, value in batch.items()}


def snapshot(model: Any) -> Dict[str, Dict[str, torch.Tensor]]:
    """Parameters and their gradients of the model's (bare) generator, on the CPU."""
    net = model.get_bare_model(model.net_g)
    params, grads = {}, {}
    for name, param in net.named_parameters():
        params[name] = param.detach().cpu().clone()
        grads[name] = param.grad.detach().cpu().clone() if param.grad is not None else torch.zeros_like(params[name])
    return {'params': params, 'grads': grads}


def run_steps(kind: str, dist: bool, rank: int, world_size: int, per_rank: int, total: int, steps: int,
              use_cuda: bool, dtype: torch.dtype) -> Dict[str, Any]:
    """Build the model with BasicSR's ``build_model`` and run ``steps`` calls of ``optimize_parameters``."""
    torch.manual_seed(INIT_SEED)  # the same initial weights everywhere (DDP broadcasts rank 0's anyway)
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        model = build_model(make_options(kind, dist, rank, world_size, use_cuda))
    finally:
        torch.set_default_dtype(default_dtype)
    record: Dict[str, Any] = {'initial': snapshot(model)['params'], 'steps': [], 'losses': [],
                              'device': str(model.device), 'ddp': type(model.net_g).__name__}
    for step in range(steps):
        batch = make_batch(kind, step, total, dtype)
        if dist:
            batch = slice_batch(batch, rank * per_rank, (rank + 1) * per_rank)
        model.feed_data(batch)
        model.optimize_parameters(step + 1)
        record['steps'].append(snapshot(model))
        record['losses'].append(dict(model.log_dict))
    return record


def main(argv: List[str]) -> None:
    """Parse the arguments, run the steps, write the record(s)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--kind', choices=('sr', 'despike'), default='sr')
    parser.add_argument('--out', required=True, help='folder for rank<r>.pt / single.pt / control.pt')
    parser.add_argument('--per-rank-batch', type=int, default=2, help='b: samples per process under torchrun')
    parser.add_argument('--world-size', type=int, default=2, help='W: the single process trains on W·b samples')
    parser.add_argument('--steps', type=int, default=2)
    parser.add_argument('--backend', default='gloo', help='torch.distributed backend under torchrun (gloo, nccl)')
    parser.add_argument('--dtype', choices=('float32', 'float64'), default='float64')
    parser.add_argument('--control', action='store_true', help='also run on the first b samples only')
    args = parser.parse_args(argv)

    dtype = getattr(torch, args.dtype)
    use_cuda = args.backend == 'nccl'
    if use_cuda:  # TF32 convolutions/matmuls round to 10 mantissa bits: far above the comparison's tolerance
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    dist = 'RANK' in os.environ
    if dist:
        init_dist('pytorch', backend=args.backend)
    rank, world_size = get_dist_info()
    if dist and world_size != args.world_size:
        raise SystemExit(f'launched with {world_size} processes but --world-size {args.world_size}')
    total = args.per_rank_batch * args.world_size
    common = dict(kind=args.kind, per_rank=args.per_rank_batch, steps=args.steps, use_cuda=use_cuda, dtype=dtype)
    record = run_steps(dist=dist, rank=rank, world_size=world_size, total=total, **common)
    backend = torch.distributed.get_backend() if dist else None
    record.update(rank=rank, world_size=world_size, dist=dist, backend=backend)
    os.makedirs(args.out, exist_ok=True)
    torch.save(record, os.path.join(args.out, f'rank{rank}.pt' if dist else 'single.pt'))
    if args.control and not dist:
        control = run_steps(dist=False, rank=0, world_size=1, total=args.per_rank_batch, **common)
        torch.save(control, os.path.join(args.out, 'control.pt'))
    if dist:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == '__main__':
    main(sys.argv[1:])
