"""Training steps on every rank with BasicSR's validation in between, as ``basicsr.train`` runs them under torchrun.

Each iteration every rank runs ``optimize_parameters`` and then ``model.validation`` (which, with ``opt['dist']``,
validates on rank 0 only: ``SRModel.dist_validation``); after the last iteration the ranks exchange a sentinel with
``all_reduce`` (it must still pair up: a collective issued by rank 0 alone during validation would take its place),
and rank 0 validates once more, as BasicSR does after the last save, while the other ranks finish. Each rank then
releases its process group, as the plugin's patched ``train_pipeline`` does (a gloo group left to interpreter exit can
abort the rank that finished first).

Writes ``<out>/rank<r>.pt``: ``{'sentinel': list, 'validations': int, 'psnr': list, 'rank': int}``. The process group
has a short timeout (``--pg-timeout``), so a collective left without a partner fails in seconds instead of hanging.
"""
import argparse
import datetime
import os
import sys
from typing import Any, Dict, List

import torch

import despike_basicsr

despike_basicsr.register()  # compat patches before basicsr loads; registers our archs and models
from basicsr.models import build_model  # noqa: E402
from basicsr.utils.dist_util import get_dist_info, init_dist  # noqa: E402
from despike_basicsr.compat import release_process_group  # noqa: E402
from grad_worker import make_batch, make_options, slice_batch  # noqa: E402


class ValSet(torch.utils.data.Dataset):
    """A few fixed validation samples in the layout of the model's real dataset."""

    def __init__(self, kind: str, count: int = 2) -> None:
        self.opt = {'name': f'{kind}_val'}
        self.data = make_batch(kind, step=99, total=count, dtype=torch.float32)

    def __len__(self) -> int:
        return len(self.data['lq'])

    def __getitem__(self, index: int) -> Dict[str, Any]:
        item = {key: value[index] for key, value in self.data.items()}
        item['lq_path'] = f'val_{index:03d}'
        return item


def main(argv: List[str]) -> None:
    """Run ``--iters`` train/validate rounds under torchrun and write this rank's record."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--kind', choices=('sr', 'despike'), default='sr')
    parser.add_argument('--out', required=True)
    parser.add_argument('--iters', type=int, default=2)
    parser.add_argument('--per-rank-batch', type=int, default=2)
    parser.add_argument('--backend', default='gloo')
    parser.add_argument('--pg-timeout', type=float, default=20.0, help='seconds a collective may wait for a partner')
    args = parser.parse_args(argv)

    init_dist('pytorch', backend=args.backend, timeout=datetime.timedelta(seconds=args.pg_timeout))
    rank, world_size = get_dist_info()
    opt = make_options(args.kind, True, rank, world_size, use_cuda=args.backend == 'nccl')
    opt['val'] = {'save_img': False, 'pbar': False,
                  'metrics': {'psnr': {'type': 'calculate_psnr', 'crop_border': 0, 'test_y_channel': False}}}
    torch.manual_seed(0)
    model = build_model(opt)
    loader = torch.utils.data.DataLoader(ValSet(args.kind), batch_size=1, shuffle=False, num_workers=0)
    psnr, validations = [], 0
    b = args.per_rank_batch

    def validate(current_iter: int) -> None:
        nonlocal validations
        model.validation(loader, current_iter, None, save_img=False)
        if hasattr(model, 'metric_results'):  # only set where nondist_validation ran
            validations += 1
            psnr.append(float(model.metric_results['psnr']))

    for it in range(1, args.iters + 1):
        batch = make_batch(args.kind, it, b * world_size, torch.float32)
        model.feed_data(slice_batch(batch, rank * b, (rank + 1) * b))
        model.optimize_parameters(it)
        validate(it)
    sentinel = torch.full((3, ), float(rank + 1))
    torch.distributed.all_reduce(sentinel)
    validate(args.iters)  # BasicSR's validation after training: rank 0 alone, nothing after it on the others
    record = {'rank': rank, 'sentinel': sentinel.tolist(), 'validations': validations, 'psnr': psnr}
    os.makedirs(args.out, exist_ok=True)
    torch.save(record, os.path.join(args.out, f'rank{rank}.pt'))
    release_process_group()


if __name__ == '__main__':
    main(sys.argv[1:])
