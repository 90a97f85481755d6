"""A training that accumulates across sittings: its small state travels in the repository, not in experiments/.

BasicSR resumes (``--auto_resume``) from ``experiments/<name>/training_states/<iter>.state`` and the weights
``experiments/<name>/models/net_g_<iter>.pth`` (plain and EMA). :func:`snapshot` copies the newest such pair into
``results/training/state/<name>/`` (about 1 MB for the shipped network; commit it), :func:`restore` puts it back in a
fresh checkout, unless experiments/ already holds a state at least as new.

    python -m despike_basicsr.training.campaign snapshot --name DeSpike_deblur
    python -m despike_basicsr.training.campaign restore --name DeSpike_deblur
"""
import argparse
import glob
import os
import os.path as osp
import re
import shutil
import sys
from typing import List, Optional, Tuple

#: Where committed campaign states live, relative to the repository root.
STATE_ROOT = osp.join('results', 'training', 'state')


def newest_numbered(folder: str, pattern: str) -> Optional[Tuple[int, str]]:
    """``(number, path)`` of the file in ``folder`` whose name matches ``pattern`` (one group: digits) with the largest
    number, or ``None``."""
    found = []
    for path in glob.glob(osp.join(folder, '*')):
        match = re.fullmatch(pattern, osp.basename(path))
        if match:
            found.append((int(match.group(1)), path))
    return max(found) if found else None


def newest_state(folder: str) -> Optional[Tuple[int, str]]:
    """``(iteration, path)`` of the newest ``<iter>.state`` in ``folder``, or ``None``."""
    return newest_numbered(folder, r'(\d+)\.state')


def _experiment_dirs(root: str, name: str) -> Tuple[str, str]:
    base = osp.join(root, 'experiments', name)
    return osp.join(base, 'training_states'), osp.join(base, 'models')


def _copy_pair(iteration: int, state_src: str, net_src: str, state_dst_dir: str, net_dst_dir: str) -> None:
    for src, dst_dir, dst_name in ((net_src, net_dst_dir, f'net_g_{iteration}.pth'),
                                   (state_src, state_dst_dir, f'{iteration}.state')):
        os.makedirs(dst_dir, exist_ok=True)
        tmp = osp.join(dst_dir, f'.{dst_name}.tmp')
        shutil.copyfile(src, tmp)
        os.replace(tmp, osp.join(dst_dir, dst_name))


def snapshot(name: str, root: str = '.') -> Optional[int]:
    """Copy the newest state and weights of ``experiments/<name>`` into ``results/training/state/<name>``.

    Older snapshots there are removed only after the new pair is in place. Returns the iteration, or ``None`` when
    the experiment has no state yet.
    """
    states, models = _experiment_dirs(root, name)
    newest = newest_state(states)
    if newest is None:
        return None
    iteration, state_path = newest
    net_path = osp.join(models, f'net_g_{iteration}.pth')
    if not osp.isfile(net_path):
        raise FileNotFoundError(f'{state_path} has no weights beside it: {net_path} is missing')
    target = osp.join(root, STATE_ROOT, name)
    _copy_pair(iteration, state_path, net_path, target, target)
    for old in glob.glob(osp.join(target, '*')):
        if osp.basename(old) not in (f'{iteration}.state', f'net_g_{iteration}.pth'):
            os.remove(old)
    return iteration


def restore(name: str, root: str = '.') -> Optional[int]:
    """Put the committed state of ``name`` where ``--auto_resume`` finds it, unless a state as new is there.

    Returns the iteration restored, or ``None`` when nothing was copied.
    """
    committed = newest_state(osp.join(root, STATE_ROOT, name))
    if committed is None:
        return None
    iteration, state_path = committed
    states, models = _experiment_dirs(root, name)
    existing = newest_state(states)
    if existing is not None and existing[0] >= iteration:
        return None
    net_path = osp.join(osp.dirname(state_path), f'net_g_{iteration}.pth')
    if not osp.isfile(net_path):
        raise FileNotFoundError(f'{state_path} has no weights beside it: {net_path} is missing')
    _copy_pair(iteration, state_path, net_path, states, models)
    return iteration


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('action', choices=('snapshot', 'restore'))
    parser.add_argument('--name', required=True, help='the experiment name (the options file\'s `name`)')
    parser.add_argument('--root', default='.', help='repository root (default: the current folder)')
    args = parser.parse_args(argv)
    iteration = (snapshot if args.action == 'snapshot' else restore)(args.name, args.root)
    verb = 'saved' if args.action == 'snapshot' else 'restored'
    what = f'{verb} iteration {iteration}' if iteration is not None else f'nothing {verb}'
    print(f'[campaign] {args.name}: {what}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
