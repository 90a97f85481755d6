"""Training steps of a tiny DeSpikeModel under torchrun where only one rank is in trouble.

Step 1: rank 1's target holds a NaN (non-finite on that rank alone). Step 2: a normal step. Before step 3 rank 1 sends
itself SIGINT (the clean stop's real path, :func:`~despike_basicsr.models.spike_base.install_stop_handler`); at most 5
steps follow. Writes ``<out>/rank<r>.pt``: ``{'rank', 'params' (per step, after it), 'initial', 'stopped_at' (the
iteration whose ``optimize_parameters`` raised ``TrainingStopped``, or None), 'completed_iter'}``. A collective left
without a partner fails after ``--pg-timeout`` seconds instead of hanging.
"""
import argparse
import datetime
import os
import signal
import sys
from typing import Any, Dict, List

import torch

import despike_basicsr

despike_basicsr.register()  # compat patches before basicsr loads; registers our archs and models
from basicsr.models import build_model  # noqa: E402
from basicsr.utils.dist_util import get_dist_info, init_dist  # noqa: E402
from despike_basicsr.compat import release_process_group  # noqa: E402
from despike_basicsr.models.spike_base import TrainingStopped, install_stop_handler  # noqa: E402
from grad_worker import make_batch, make_options, slice_batch, snapshot  # noqa: E402

TROUBLED_RANK = 1
STOP_BEFORE = 3


def main(argv: List[str]) -> None:
    """Run the steps (see the module doc) and write this rank's record."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--out', required=True)
    parser.add_argument('--pg-timeout', type=float, default=20.0, help='seconds a collective may wait for a partner')
    args = parser.parse_args(argv)

    init_dist('pytorch', backend='gloo', timeout=datetime.timedelta(seconds=args.pg_timeout))
    rank, world_size = get_dist_info()
    opt = make_options('despike', True, rank, world_size, use_cuda=False)
    opt['path'].update(models=os.path.join(args.out, 'models'), training_states=os.path.join(args.out, 'states'))
    for folder in ('models', 'training_states'):  # BasicSR's make_exp_dirs does this before training
        os.makedirs(opt['path'][folder], exist_ok=True)
    torch.manual_seed(0)
    model = build_model(opt)
    install_stop_handler()
    record: Dict[str, Any] = {'rank': rank, 'initial': snapshot(model)['params'], 'params': [], 'stopped_at': None}
    b = 2
    for it in range(1, 6):
        batch = slice_batch(make_batch('despike', it, b * world_size, torch.float32), rank * b, (rank + 1) * b)
        if it == 1 and rank == TROUBLED_RANK:
            batch['gt'][0, 0, 0, 0] = float('nan')
        if it == STOP_BEFORE and rank == TROUBLED_RANK:
            os.kill(os.getpid(), signal.SIGINT)
        model.update_learning_rate(it, warmup_iter=-1)  # as BasicSR's loop: the model learns the iteration here
        model.feed_data(batch)
        try:
            model.optimize_parameters(it)
        except TrainingStopped:
            record['stopped_at'] = it
            break
        finally:
            record['params'].append(snapshot(model)['params'])
    record['completed_iter'] = model.completed_iter
    os.makedirs(args.out, exist_ok=True)
    torch.save(record, os.path.join(args.out, f'rank{rank}.pt'))
    release_process_group()


if __name__ == '__main__':
    main(sys.argv[1:])
