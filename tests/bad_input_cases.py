#!/usr/bin/env python
"""Feeds every kind of bad input a user can hand us to the real readers and prints what the user sees.

Each case makes its bad file in a temporary folder, calls the function (or command) a user would, records the error's
type and message, and checks that the bad file is byte-for-byte unchanged afterwards. The markdown table it prints
is the one in docs/reliability.md; tests/test_bad_inputs.py runs the same cases and fails if any of them ends in an
unexplained traceback, a message that does not name the file or key, or a modified file.

Usage::

    python tests/bad_input_cases.py                      # markdown table on stdout
    python tests/bad_input_cases.py --max-chars 110      # messages shortened (docs/reliability.md's copy)
"""
import hashlib
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from os import path as osp
from typing import Callable, Dict, List, Optional

import numpy as np

from despike_basicsr.checkpoint import CheckpointError, check_fits, load_network_weights, safe_torch_load
from despike_basicsr.data.preparation import ImageReadError, PairingError, read_depth, read_image
from despike_basicsr.data.spike_lmdb import LMDBKeyError, SpikeLMDBError, SpikeLMDBReader
from despike_basicsr.options_file import OptionsError
from despike_basicsr.training.options import check_options_file
from despike_basicsr.spike.io import SpikeFileError, load_spikes

#: Errors that are answers (they name the problem); anything else escaping a case is a bug.
CLEAR_ERRORS = (SpikeFileError, ImageReadError, PairingError, SpikeLMDBError, LMDBKeyError, OptionsError,
                CheckpointError, FileNotFoundError, ValueError)


@dataclass
class Case:
    """One bad input: what it is, how to make it, how the user hits it, and what the message must name."""
    group: str
    what: str
    make: Callable[[str], str]  # folder -> path of the bad input
    call: Callable[[str], object]  # path -> (raises)
    must_name: Callable[[str], str] = osp.basename  # path -> text the message must contain


@dataclass
class Outcome:
    case: Case
    error_type: Optional[str]
    message: str
    clear: bool
    names_input: bool
    unchanged: bool


# ------------------------------------------------------------------------------------------------------------ makers
def _write(folder: str, name: str, data: bytes) -> str:
    path = osp.join(folder, name)
    with open(path, 'wb') as f:
        f.write(data)
    return path


def _npz(folder: str, name: str, **arrays) -> str:
    path = osp.join(folder, name)
    np.savez(path, **arrays)
    return path


def _tiny_lmdb(folder: str) -> str:
    from despike_basicsr.data.spike_lmdb import SpikeLMDBWriter
    path = osp.join(folder, 'tiny.lmdb')
    rng = np.random.default_rng(0)
    with SpikeLMDBWriter(path) as writer:
        writer.add(
            'scene_0',
            gt=(rng.random((8, 8)) * 255).astype(np.uint8),
            params={'T': 16},
            spikes=(rng.random((16, 8, 8)) < 0.3).astype(np.uint8))
    return path


def _lmdb_with_bad_meta(folder: str) -> str:
    path = _tiny_lmdb(folder)
    meta = osp.join(path, 'meta_info.txt')
    with open(meta, encoding='utf-8') as f:
        text = f.read()
    with open(meta, 'w', encoding='utf-8') as f:
        f.write(text.replace('16,8,8', '32,8,8'))
    return path


def _options(folder: str, mutate: Callable[[dict], None]) -> str:
    import yaml
    root = osp.dirname(osp.dirname(osp.abspath(__file__)))
    with open(osp.join(root, 'options', 'train_despike_demo.yml'), encoding='utf-8') as f:
        opt = yaml.safe_load(f)
    mutate(opt)
    path = osp.join(folder, 'options.yml')
    with open(path, 'w', encoding='utf-8') as f:
        yaml.safe_dump(opt, f, sort_keys=False)
    return path


def _checkpoint_of_other_arch(folder: str) -> str:
    import torch
    path = osp.join(folder, 'gkmnet.pth')
    torch.save({'params': {'encoder.0.weight': torch.zeros(4, 1, 3, 3)}}, path)
    return path


def _load_despike_checkpoint(path: str) -> None:
    """What ``despike-test``/``despike-infer`` do with ``--weights``: weights-only load, then a strict key check."""
    from basicsr.utils.registry import ARCH_REGISTRY
    net = ARCH_REGISTRY.get('DeSpikeNet')(num_feat=8, windows=[16], num_scales=1, num_blocks=1)
    check_fits(net, load_network_weights(path), path)


def _set(opt: dict, dotted: str, value) -> None:
    node = opt
    *parents, leaf = dotted.split('.')
    for key in parents:
        node = node[key]
    node[leaf] = value


def build_cases() -> List[Case]:
    """Every bad input the table covers."""
    frame = 250 * 400 // 8
    bits = np.zeros((4, 6, 10), np.uint8)
    return [
        Case('spike file', '`.dat` shorter than one frame', lambda d: _write(d, 'cut.dat', bytes(frame - 100)),
             lambda p: load_spikes(p, height=250, width=400)),
        Case('spike file', '`.dat` read with the wrong height/width', lambda d: _write(d, 'rec.dat', bytes(frame * 2)),
             lambda p: load_spikes(p, height=256, width=400)),
        Case('spike file', 'empty `.dat`', lambda d: _write(d, 'empty.dat', b''),
             lambda p: load_spikes(p, height=250, width=400)),
        Case('spike file', '`.npz` with no known key', lambda d: _npz(d, 'other.npz', frames=bits),
             lambda p: load_spikes(p)),
        Case('spike file', '`.npz` with non-binary values', lambda d: _npz(d, 'counts.npz', spk=bits + 2),
             lambda p: load_spikes(p)),
        Case('spike file', '`.npz` with a float array',
             lambda d: _npz(d, 'float.npz', spk=bits.astype(np.float32) + .5), lambda p: load_spikes(p)),
        Case('spike file', '`.npz` that is not a zip archive', lambda d: _write(d, 'broken.npz', b'not a zip'),
             lambda p: load_spikes(p)),
        Case('image', 'unreadable image (not an image format)', lambda d: _write(d, 'photo.png', b'\x89PNG garbage'),
             read_image),
        Case('image', 'image of an unsupported bit depth (32-bit int TIFF)', lambda d: _tiff_int32(d), read_image),
        Case('image', 'depth map holding NaN', lambda d: _npy(d, 'depth.npy', np.full((4, 4), np.nan, np.float32)),
             read_depth),
        Case('LMDB', 'missing key', _tiny_lmdb, lambda p: SpikeLMDBReader(p).read_sample('scene_9', 0, 4, 0, 4, 0, 4),
             lambda p: 'scene_9'),
        Case('LMDB', '`meta_info.txt` line that disagrees with the data', _lmdb_with_bad_meta,
             lambda p: SpikeLMDBReader(p).read_sample('scene_0', 0, 4, 0, 4, 0, 4), lambda p: 'scene_0'),
        Case('LMDB', 'folder that is not an LMDB', lambda d: _folder(d, 'photos.lmdb'), SpikeLMDBReader),
        Case('options', 'unknown top-level key', lambda d: _options(d, lambda o: o.update(trian=o['train'])),
             check_options_file, lambda p: 'trian'),
        Case('options', 'wrong type (`batch_size_per_gpu: "2"`)',
             lambda d: _options(d, lambda o: _set(o, 'datasets.train.batch_size_per_gpu', '2')), check_options_file,
             lambda p: 'batch_size_per_gpu'),
        Case('options', 'unknown network argument', lambda d: _options(d, lambda o: _set(o, 'network_g.num_feats', 8)),
             check_options_file, lambda p: 'num_feats'),
        Case('options', 'unregistered `type:`', lambda d: _options(d, lambda o: _set(o, 'network_g.type', 'DeSpike')),
             check_options_file, lambda p: 'DeSpike'),
        Case('options', 'streams shorter than DeSpikeNet reads',
             lambda d: _options(d, lambda o: _set(o, 'datasets.train.temporal_len', [4, 32])), check_options_file,
             lambda p: 'temporal_len'),
        Case('calibration', 'FPN file of the wrong shape', lambda d: _fpn(d, np.ones((10, 10), np.float32)),
             lambda p: _load_fpn(p, (250, 400))),
        Case('calibration', 'FPN file with zeros', lambda d: _fpn(d, np.zeros((250, 400), np.float32)),
             lambda p: _load_fpn(p, (250, 400))),
        Case('calibration', 'FPN file with NaN', lambda d: _fpn(d, np.full((250, 400), np.nan, np.float32)),
             lambda p: _load_fpn(p, (250, 400))),
        Case('checkpoint', 'truncated checkpoint', lambda d: _truncated_checkpoint(d),
             lambda p: safe_torch_load(p, what='network checkpoint')),
        Case('checkpoint', 'checkpoint of another arch', _checkpoint_of_other_arch, _load_despike_checkpoint),
        Case('checkpoint', 'missing resume state', lambda d: osp.join(d, '1000.state'),
             lambda p: safe_torch_load(p, what='training state')),
    ]


def _folder(folder: str, name: str) -> str:
    path = osp.join(folder, name)
    os.makedirs(path)
    _write(path, 'readme.txt', b'hello')
    return path


def _npy(folder: str, name: str, array: np.ndarray) -> str:
    path = osp.join(folder, name)
    np.save(path, array)
    return path


def _tiff_int32(folder: str) -> str:
    import cv2
    path = osp.join(folder, 'depth32.tiff')
    cv2.imwrite(path, np.arange(16, dtype=np.int32).reshape(4, 4))
    return path


def _fpn(folder: str, gamma: np.ndarray) -> str:
    path = osp.join(folder, 'fpn.npz')
    np.savez(
        path,
        gamma=gamma,
        response=np.ones_like(gamma),
        dark=np.zeros_like(gamma),
        bad=np.zeros(gamma.shape, bool),
        ref=np.float32(1.0))
    return path


def _load_fpn(path: str, shape) -> np.ndarray:
    from despike_basicsr.spike.fpn import load_fpn
    return load_fpn(path, shape)


def _truncated_checkpoint(folder: str) -> str:
    import torch
    path = osp.join(folder, 'net_g_1000.pth')
    torch.save({'params': {'w': torch.zeros(256, 256)}}, path)
    with open(path, 'rb') as f:
        data = f.read()
    with open(path, 'wb') as f:
        f.write(data[:len(data) // 2])
    return path


# ------------------------------------------------------------------------------------------------------------ runner
def _digest(path: str) -> Dict[str, str]:
    """Hash of a file, or of every file under a folder."""
    if osp.isfile(path):
        with open(path, 'rb') as f:
            return {path: hashlib.sha256(f.read()).hexdigest()}
    result = {}
    for root, _, files in os.walk(path):
        for name in files:
            result.update(_digest(osp.join(root, name)))
    return result


def run_case(case: Case, folder: str) -> Outcome:
    path = case.make(folder)
    before = _digest(path) if osp.exists(path) else {}
    try:
        case.call(path)
    except Exception as error:  # noqa: B902 (recording every outcome is the point)
        error_type, message = type(error).__name__, str(error).strip('"\'')
        clear = isinstance(error, CLEAR_ERRORS)
    else:
        error_type, message, clear = None, '(no error: the bad input was accepted)', False
    after = _digest(path) if osp.exists(path) else {}
    return Outcome(case, error_type, message, clear, case.must_name(path) in message, before == after)


def run_cases() -> List[Outcome]:
    outcomes = []
    for case in build_cases():
        folder = tempfile.mkdtemp(prefix='despike-bad-')
        try:
            outcomes.append(run_case(case, folder))
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    return outcomes


def markdown(outcomes: List[Outcome], max_chars: int = 320) -> str:
    lines = [
        '| input | bad input | what the user sees | names it | file unchanged |', '| --- | --- | --- | --- | --- |'
    ]
    for o in outcomes:
        first = ' '.join(o.message.split())
        first = first.replace(tempfile.gettempdir(), '/tmp').replace('|', '\\|')
        for part in first.split():  # shorten temporary folders to their file names
            if part.startswith('/tmp/despike-bad-'):
                first = first.replace(part,
                                      '…/' + osp.basename(part.rstrip(':,.;)')) + part[len(part.rstrip(':,.;)')):])
        first = first if len(first) <= max_chars else first[:max_chars - 3].rstrip() + '...'
        lines.append(f'| {o.case.group} | {o.case.what} | `{o.error_type}`: {first} | '
                     f'{"yes" if o.names_input else "no"} | {"yes" if o.unchanged else "no"} |')
    return '\n'.join(lines)


def main() -> int:
    outcomes = run_cases()
    if '--json' in sys.argv:
        print(json.dumps([dict(what=o.case.what, error=o.error_type, message=o.message) for o in outcomes], indent=1))
    else:
        max_chars = int(sys.argv[sys.argv.index('--max-chars') + 1]) if '--max-chars' in sys.argv else 320
        print(markdown(outcomes, max_chars))
    return 0 if all(o.clear and o.names_input and o.unchanged for o in outcomes) else 1


if __name__ == '__main__':
    sys.exit(main())
