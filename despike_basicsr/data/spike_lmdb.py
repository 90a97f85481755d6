"""Bit-packed spike streams in LMDB: the writer used by data preparation and the reader used by the datasets.

Layout (docs/architecture.md, "LMDB layout"): a ``<name>.lmdb`` folder holding ``data.mdb``, ``lock.mdb`` and
``meta_info.txt`` (one line per sample: ``<key> <T>,<H>,<W> <json of simulation parameters>``); for every sample the
keys ``<key>/spk`` (the stream packed along time, ``(ceil(T/8), H, W)`` uint8, C order), ``<key>/gt`` (the
display-referred grayscale ground truth: raw ``(H, W)`` uint8 bytes, C order, or PNG bytes in LMDBs written before raw
storage or with ``gt_format='png'``; a reader tells them apart by the PNG signature) and ``<key>/meta`` (json with
``T``, ``H``, ``W``, ``center`` and the simulation parameters). Optional extra files (e.g. ``fpn.npz`` of the simulated
sensor) may sit beside them.

Because time is packed into bits of each pixel's byte planes, a reader can crop space on the packed bytes first and
unpack only the crop: a 256x256 crop of a 1120x1680 stream touches 3.5 % of the stored bytes. Raw ground truth is
sliced the same way, in place; a PNG has to be decoded whole (16 ms at 1680x1120), which is why raw is the default.
"""
import json
import os
import os.path as osp
import re
import shutil
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

import cv2
import lmdb
import numpy as np

from despike_basicsr.errors import DespikeUserError
from despike_basicsr.spike.io import pack_time, unpack_time

META_INFO_NAME = 'meta_info.txt'
#: Keys become path-like LMDB keys ``<key>/spk``; keep them to characters that survive file names and meta_info lines.
_KEY_PATTERN = re.compile(r'^[A-Za-z0-9_.\-]+$')
_INITIAL_MAP_SIZE = 1 << 30
#: The eight bytes every PNG file starts with; raw ground truth is told apart from PNG by them.
PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
GT_FORMATS = ('raw', 'png')


class SpikeLMDBError(DespikeUserError, ValueError):
    """An LMDB folder whose contents are not what the spike LMDB layout requires."""


class NotAnLMDBError(SpikeLMDBError):
    """A folder that is not an LMDB environment."""


class MetaInfoError(SpikeLMDBError):
    """A ``meta_info.txt`` line that is malformed or disagrees with the stored data."""


class LMDBKeyError(DespikeUserError, KeyError):
    """A sample key that is not in ``meta_info.txt`` or whose records are missing from the LMDB."""

    def __str__(self) -> str:
        # KeyError quotes its argument; the message reads better plain.
        return str(self.args[0]) if self.args else ''


def _json_ready(value: Any) -> Any:
    """Turn numpy scalars/arrays and tuples into plain JSON types (meta must round-trip exactly)."""
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, np.ndarray):
        return _json_ready(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    return value


def _dump_json(meta: Dict[str, Any]) -> str:
    return json.dumps(meta, sort_keys=True, separators=(',', ':'))


def packed_byte_count(length: int, height: int, width: int) -> int:
    """Bytes of a time-packed stream: ``ceil(T/8) * H * W``."""
    return -(-length // 8) * height * width


class PackedWindow(NamedTuple):
    """A spatial crop of a time-packed stream, with the frame range it is to be unpacked to.

    ``planes`` ``(P, h, w)`` uint8 holds frames ``[8 * p0, 8 * p0 + length)`` of the stored stream; the requested frames
    are ``[t0, t1)`` relative to that first frame, so ``unpack_time(planes, length, t0, t1)`` gives them. Spatial
    flips/transposes of ``planes`` commute with unpacking (time lives in the bits), and cost 8x less on packed bytes.
    """
    planes: np.ndarray
    length: int
    t0: int
    t1: int

    def unpack(self) -> np.ndarray:
        """The frames ``(t1 - t0, h, w)`` uint8 of 0/1."""
        return unpack_time(self.planes, self.length, self.t0, self.t1)


def _raw_uint8_image(image: np.ndarray, shape: Tuple[int, int], what: str) -> bytes:
    """An (H, W) image as raw uint8 bytes (floats in [0, 1] are rounded), checked against ``shape``."""
    image = np.asarray(image)
    if image.shape != tuple(shape):
        raise ValueError(f'{what} shape {image.shape} differs from the spike resolution {tuple(shape)}')
    if image.dtype != np.uint8:
        image = np.clip(np.round(image.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(image).tobytes()


class SpikeLMDBWriter:
    """Writes samples to a new ``.lmdb`` folder, atomically.

    Everything goes to ``<path>.tmp-<pid>`` first; :meth:`close` writes ``meta_info.txt`` and renames the folder to
    ``path``. An exception inside a ``with`` block (or :meth:`abort`) deletes the temporary folder, so an interrupted
    preparation never leaves a partial ``.lmdb`` behind.

    Example:
        >>> with SpikeLMDBWriter('out/train.lmdb') as writer:
        ...     writer.add('0001', gt_uint8, {'threshold': 2.0, 'eta': 1.0, 'seed': 7}, spikes=spikes)

    Args:
        path: Output folder; must end with ``.lmdb``.
        overwrite: Replace an existing ``path`` (only at the very end, after everything was written).
        map_size: Initial LMDB map size in bytes; it doubles automatically when full.
        gt_format: ``'raw'`` (default): ground truth as raw uint8 bytes, which a reader slices to the crop without
            decoding (about 1.5x the PNG's size, a few percent of a sample's packed spikes); ``'png'``: PNG bytes (the
            earlier layout; readers decode the whole image for every crop).

    Raises:
        ValueError: If ``path`` does not end with ``.lmdb`` or ``gt_format`` is unknown.
        FileExistsError: If ``path`` exists and ``overwrite`` is false.
    """

    def __init__(self,
                 path: str,
                 overwrite: bool = False,
                 map_size: int = _INITIAL_MAP_SIZE,
                 gt_format: str = 'raw') -> None:
        path = osp.abspath(os.fspath(path)).rstrip('/')
        if not path.endswith('.lmdb'):
            raise ValueError(f'LMDB output must be a folder whose name ends with ".lmdb", got {path}')
        if gt_format not in GT_FORMATS:
            raise ValueError(f'gt_format must be one of {GT_FORMATS}, got {gt_format!r}')
        self.gt_format = gt_format
        if osp.exists(path) and not overwrite:
            raise FileExistsError(f'{path} already exists; pass overwrite=True (--overwrite) to replace it')
        self.path = path
        self.overwrite = overwrite
        self.tmp_path = f'{path}.tmp-{os.getpid()}'
        os.makedirs(osp.dirname(path), exist_ok=True)
        if osp.exists(self.tmp_path):  # left by an earlier crashed run of a process with the same pid
            shutil.rmtree(self.tmp_path)
        self._map_size = map_size
        self._env: Optional[lmdb.Environment] = lmdb.open(self.tmp_path, map_size=map_size)
        self._lines: List[str] = []
        self._keys: set = set()

    @property
    def num_samples(self) -> int:
        """Number of samples added so far."""
        return len(self._lines)

    def staging_path(self, name: str) -> str:
        """Path of an extra file (e.g. ``fpn.npz``) inside the folder being written; it moves with the rename."""
        if osp.basename(name) != name or name in ('data.mdb', 'lock.mdb', META_INFO_NAME):
            raise ValueError(f'extra file name must be a plain file name other than the LMDB files, got {name!r}')
        return osp.join(self.tmp_path, name)

    def add(self,
            key: str,
            gt: np.ndarray,
            params: Dict[str, Any],
            spikes: Optional[np.ndarray] = None,
            packed: Optional[np.ndarray] = None,
            length: Optional[int] = None,
            blurred: Optional[np.ndarray] = None) -> None:
        """Add one sample.

        Args:
            key: Sample name: letters, digits, ``_``, ``-``, ``.``; unique within the LMDB.
            gt: Ground truth (H, W): uint8, or float in [0, 1] (rounded to uint8).
            params: Simulation parameters (JSON-serialisable; numpy scalars are converted). ``center`` (the target
                frame) defaults to ``T // 2``.
            spikes: Stream (T, H, W) of 0/1; or give ``packed`` and ``length`` instead.
            packed: Time-packed stream (ceil(T/8), H, W) uint8.
            length: Number of frames T of ``packed``.
            blurred: Optional defocused image (H, W) the camera saw, display-referred like ``gt`` (uint8, or float in
                [0, 1]): stored raw as ``<key>/blurred`` and flagged ``"blurred": true`` in the metadata. It is the
                target of a learned spike front end's own training stage (``SpikeFrontEndModel``).

        Raises:
            ValueError: For a bad key, a duplicate key, or arrays whose shapes disagree.
        """
        if self._env is None:
            raise RuntimeError(f'writer for {self.path} is already closed')
        if not isinstance(key, str) or not _KEY_PATTERN.match(key):
            raise ValueError(f'sample key must match {_KEY_PATTERN.pattern}, got {key!r}')
        if key in self._keys:
            raise ValueError(f'duplicate sample key {key!r} in {self.path}')
        if (spikes is None) == (packed is None):
            raise ValueError(f'sample {key!r}: give exactly one of spikes or packed')
        if spikes is not None:
            spikes = np.asarray(spikes)
            if spikes.ndim != 3:
                raise ValueError(f'sample {key!r}: spikes must be (T, H, W), got shape {spikes.shape}')
            length = spikes.shape[0]
            packed = pack_time(spikes.astype(np.uint8, copy=False))
        packed = np.ascontiguousarray(packed, dtype=np.uint8)
        if length is None or packed.ndim != 3 or packed.shape[0] != -(-int(length) // 8) or length <= 0:
            raise ValueError(f"sample {key!r}: packed spikes of shape {packed.shape} do not hold {length} frames")
        length = int(length)
        height, width = packed.shape[1:]
        gt = np.asarray(gt)
        if gt.shape != (height, width):
            raise ValueError(f'sample {key!r}: gt shape {gt.shape} differs from the spike resolution {(height, width)}')
        if gt.dtype != np.uint8:
            gt = np.clip(np.round(gt.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
        gt_bytes = np.ascontiguousarray(gt).tobytes()
        if self.gt_format == 'png' or gt_bytes.startswith(PNG_SIGNATURE):  # (the latter: keeps raw unambiguous)
            ok, png = cv2.imencode('.png', gt)
            if not ok:
                raise ValueError(f'sample {key!r}: could not encode the ground truth as PNG')
            gt_bytes = png.tobytes()

        meta = _json_ready(dict(params))
        meta.setdefault('center', length // 2)
        meta.update({'T': length, 'H': int(height), 'W': int(width)})
        records = {f'{key}/spk': packed.tobytes(), f'{key}/gt': gt_bytes}
        if blurred is not None:
            records[f'{key}/blurred'] = _raw_uint8_image(blurred, (height, width), f'sample {key!r}: blurred')
            meta['blurred'] = True
        records[f'{key}/meta'] = _dump_json(meta).encode()
        self._put(records)
        self._keys.add(key)
        self._lines.append(f'{key} {length},{height},{width} {_dump_json(meta)}')

    def _put(self, records: Dict[str, bytes]) -> None:
        while True:
            try:
                with self._env.begin(write=True) as txn:
                    for name, value in records.items():
                        txn.put(name.encode(), value)
                return
            except lmdb.MapFullError:
                self._map_size *= 2
                self._env.set_mapsize(self._map_size)

    def close(self) -> str:
        """Finish: write ``meta_info.txt``, close the LMDB and move it to its final name.

        Returns:
            The final path.

        Raises:
            ValueError: If no sample was added (the temporary folder is removed).
        """
        if self._env is None:
            return self.path
        if not self._lines:
            self.abort()
            raise ValueError(f'no samples were added; {self.path} was not written')
        with open(osp.join(self.tmp_path, META_INFO_NAME), 'w', encoding='utf-8') as f:
            f.write('\n'.join(self._lines) + '\n')
        self._env.sync()
        self._env.close()
        self._env = None
        if osp.exists(self.path):
            if not self.overwrite:  # someone created it while we were writing
                shutil.rmtree(self.tmp_path, ignore_errors=True)
                raise FileExistsError(f'{self.path} appeared while writing; pass overwrite=True to replace it')
            old = f'{self.path}.old-{os.getpid()}'
            os.rename(self.path, old)
            os.rename(self.tmp_path, self.path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(self.tmp_path, self.path)
        return self.path

    def abort(self) -> None:
        """Discard everything written so far (the final path is never touched)."""
        if self._env is not None:
            self._env.close()
            self._env = None
        shutil.rmtree(self.tmp_path, ignore_errors=True)

    def __enter__(self) -> 'SpikeLMDBWriter':
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


# One environment per (folder, data file, process): py-lmdb refuses to open the same environment twice in a process,
# and several datasets (train and val, or two readers in a test) may read the same LMDB. The data file's inode is part
# of the key so that a folder replaced by ``overwrite=True`` is opened afresh.
_SHARED_ENVS: Dict[Tuple[str, int, int], List[Any]] = {}


def _open_shared_env(path: str) -> lmdb.Environment:
    try:
        inode = os.stat(osp.join(path, 'data.mdb')).st_ino
    except FileNotFoundError:
        raise NotAnLMDBError(f'{path} is not an LMDB folder: it has no data.mdb') from None
    pid = os.getpid()
    for inherited in [k for k in _SHARED_ENVS if k[2] != pid]:
        # Handles inherited through fork (DataLoader workers): LMDB forbids using them in the child, and py-lmdb would
        # refuse to reopen the same files while they are registered. Closing the child's copy leaves the parent's
        # untouched (read-only, lock=False: no file locks are involved).
        _SHARED_ENVS.pop(inherited)[0].close()
    cache_key = (path, inode, pid)
    entry = _SHARED_ENVS.get(cache_key)
    if entry is None:
        try:
            env = lmdb.open(path, readonly=True, lock=False, readahead=False, meminit=False)
        except lmdb.Error as err:
            raise NotAnLMDBError(f'{path} is not a readable LMDB: {err}') from None
        entry = _SHARED_ENVS[cache_key] = [env, 0]
    entry[1] += 1
    return entry[0]


def _release_shared_env(env: lmdb.Environment) -> None:
    for cache_key, entry in list(_SHARED_ENVS.items()):
        if entry[0] is env:
            entry[1] -= 1
            if entry[1] <= 0:
                env.close()
                del _SHARED_ENVS[cache_key]
            return


class SpikeLMDBReader:
    """Reads samples from a spike ``.lmdb`` folder; safe to share with DataLoader workers.

    The environment opens read-only without locking, lazily and once per process (an LMDB handle must not cross a
    fork). Every key is checked against its ``meta_info.txt`` line on first use, so a bad record fails with a message
    naming the key instead of producing garbage tensors.

    Args:
        path: The ``.lmdb`` folder.

    Raises:
        FileNotFoundError: If the folder or its ``meta_info.txt`` does not exist.
        NotAnLMDBError: If the folder holds no LMDB data.
        MetaInfoError: If a ``meta_info.txt`` line is malformed.
    """

    def __init__(self, path: str) -> None:
        self.path = osp.abspath(os.fspath(path)).rstrip('/')
        if not osp.isdir(self.path):
            raise FileNotFoundError(f'LMDB folder {self.path} does not exist')
        if not osp.isfile(osp.join(self.path, 'data.mdb')):
            raise NotAnLMDBError(f'{self.path} is not an LMDB folder: it has no data.mdb '
                                 '(make one with scripts/prepare_dpdd.py, make_demo_dataset.py or pack_folder.py)')
        self.meta_info_path = osp.join(self.path, META_INFO_NAME)
        if not osp.isfile(self.meta_info_path):
            raise FileNotFoundError(f'{self.meta_info_path} does not exist; every spike LMDB needs one')
        self._entries: Dict[str, Tuple[int, Tuple[int, int, int], Dict[str, Any]]] = {}
        self.keys: List[str] = []
        self._parse_meta_info()
        self._env: Optional[lmdb.Environment] = None
        self._env_pid: Optional[int] = None
        self._validated: Dict[str, Dict[str, Any]] = {}

    def _parse_meta_info(self) -> None:
        with open(self.meta_info_path, encoding='utf-8') as f:
            lines = f.read().splitlines()
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            parts = line.strip().split(' ', 2)
            where = f'{self.meta_info_path} line {number}'
            try:
                shape = tuple(int(v) for v in parts[1].split(','))
            except (IndexError, ValueError):
                shape = ()
            if len(shape) != 3 or min(shape) <= 0:
                raise MetaInfoError(f'{where}: expected "<key> <T>,<H>,<W> <json>", found {line!r}')
            try:
                params = json.loads(parts[2]) if len(parts) > 2 else {}
            except json.JSONDecodeError as err:
                raise MetaInfoError(f'{where}: the parameters are not valid json ({err}): {parts[2]!r}') from None
            key = parts[0]
            if key in self._entries:
                raise MetaInfoError(f'{where}: key {key!r} appears twice')
            self._entries[key] = (number, shape, params)
            self.keys.append(key)
        if not self.keys:
            raise MetaInfoError(f'{self.meta_info_path} lists no samples')

    def __len__(self) -> int:
        return len(self.keys)

    def __getstate__(self) -> Dict[str, Any]:
        state = self.__dict__.copy()
        state['_env'] = None
        state['_env_pid'] = None
        return state

    def _txn(self, buffers: bool = False) -> lmdb.Transaction:
        if self._env is None or self._env_pid != os.getpid():
            self._env = _open_shared_env(self.path)
            self._env_pid = os.getpid()
        return self._env.begin(buffers=buffers)

    def close(self) -> None:
        """Drop this reader's handle; the environment closes when no reader of this process uses it."""
        if self._env is not None and self._env_pid == os.getpid():
            _release_shared_env(self._env)
        self._env = None

    def shape(self, key: str) -> Tuple[int, int, int]:
        """``(T, H, W)`` of a sample as listed in ``meta_info.txt``."""
        return self._entry(key)[1]

    def _entry(self, key: str) -> Tuple[int, Tuple[int, int, int], Dict[str, Any]]:
        try:
            return self._entries[key]
        except KeyError:
            examples = ', '.join(self.keys[:3])
            raise LMDBKeyError(f'key {key!r} is not listed in {self.meta_info_path} '
                               f'({len(self.keys)} keys, e.g. {examples})') from None

    def _missing(self, key: str, record: str) -> LMDBKeyError:
        number = self._entries[key][0]
        return LMDBKeyError(f'record {key + "/" + record!r} is missing from {self.path}, although '
                            f'{META_INFO_NAME} line {number} lists key {key!r}')

    def meta(self, key: str) -> Dict[str, Any]:
        """The stored ``<key>/meta`` (T, H, W, center, simulation parameters), checked against ``meta_info.txt``.

        Raises:
            LMDBKeyError: If the key is unknown or its records are missing.
            MetaInfoError: If the ``meta_info.txt`` line disagrees with the stored records.
        """
        if key in self._validated:
            return self._validated[key]
        number, (length, height, width), params = self._entry(key)
        where = f'{self.meta_info_path} line {number} (key {key!r})'
        with self._txn(buffers=True) as txn:
            raw_meta = txn.get(f'{key}/meta'.encode())
            if raw_meta is None:
                raise self._missing(key, 'meta')
            meta = json.loads(bytes(raw_meta))
            spk = txn.get(f'{key}/spk'.encode())
            if spk is None:
                raise self._missing(key, 'spk')
            spk_bytes = len(spk)
            if txn.get(f'{key}/gt'.encode()) is None:
                raise self._missing(key, 'gt')
        stored_shape = (meta.get('T'), meta.get('H'), meta.get('W'))
        if stored_shape != (length, height, width):
            raise MetaInfoError(f'{where} says T,H,W = {length},{height},{width} but the stored {key}/meta says '
                                f'{",".join(str(v) for v in stored_shape)}')
        expected = packed_byte_count(length, height, width)
        if spk_bytes != expected:
            raise MetaInfoError(f'{where} says T,H,W = {length},{height},{width} ({expected} packed bytes) but the '
                                f'stored {key}/spk holds {spk_bytes} bytes')
        differing = sorted(k for k in set(params) | set(meta) if params.get(k) != meta.get(k))
        if params and differing:
            details = ', '.join(f'{k}: {params.get(k)!r} vs {meta.get(k)!r}' for k in differing[:4])
            raise MetaInfoError(f'{where} disagrees with the stored {key}/meta on {details}')
        self._validated[key] = meta
        return meta

    def read_sample(self,
                    key: str,
                    t0: int = 0,
                    t1: Optional[int] = None,
                    y0: int = 0,
                    y1: Optional[int] = None,
                    x0: int = 0,
                    x1: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
        """Read frames ``[t0, t1)`` of the crop ``[y0:y1, x0:x1]`` and the matching ground-truth crop.

        Space is cropped on the packed bytes (read in place from the memory map) before time is unpacked, so the cost
        scales with the crop, not with the stored resolution.

        Returns:
            ``(spikes, gt)``: uint8 (t1-t0, y1-y0, x1-x0) of 0/1, and uint8 (y1-y0, x1-x0).

        Raises:
            LMDBKeyError, MetaInfoError: As :meth:`meta`.
            ValueError: If the window lies outside the stored stream.
        """
        window, gt = self.read_packed(key, t0, t1, y0, y1, x0, x1)
        return window.unpack(), gt

    def read_packed(self,
                    key: str,
                    t0: int = 0,
                    t1: Optional[int] = None,
                    y0: int = 0,
                    y1: Optional[int] = None,
                    x0: int = 0,
                    x1: Optional[int] = None) -> Tuple[PackedWindow, np.ndarray]:
        """As :meth:`read_sample`, but the spikes stay packed: ``(PackedWindow, gt crop)``.

        A loader that flips or rotates its crops does so on ``window.planes`` (8x fewer bytes than the frames) and
        unpacks last with ``window.unpack()``.

        Raises:
            LMDBKeyError, MetaInfoError: As :meth:`meta`, and if the stored ground truth is neither raw ``H x W``
                bytes nor a PNG of that size.
            ValueError: If the window lies outside the stored stream.
        """
        meta = self.meta(key)
        length, height, width = meta['T'], meta['H'], meta['W']
        t1 = length if t1 is None else t1
        y1 = height if y1 is None else y1
        x1 = width if x1 is None else x1
        for name, lo, hi, size in (('t', t0, t1, length), ('y', y0, y1, height), ('x', x0, x1, width)):
            if not 0 <= lo < hi <= size:
                raise ValueError(f'sample {key!r} in {self.path}: window {name}=[{lo}, {hi}) is outside [0, {size})')
        plane0, plane1 = t0 // 8, -(-t1 // 8)
        png = None
        with self._txn(buffers=True) as txn:
            buffer = txn.get(f'{key}/spk'.encode())
            planes = np.frombuffer(buffer, dtype=np.uint8).reshape(-(-length // 8), height, width)
            crop = np.ascontiguousarray(planes[plane0:plane1, y0:y1, x0:x1])
            gt_buffer = txn.get(f'{key}/gt'.encode())
            if len(gt_buffer) == height * width and bytes(gt_buffer[:len(PNG_SIGNATURE)]) != PNG_SIGNATURE:
                gt = np.frombuffer(gt_buffer, np.uint8).reshape(height, width)[y0:y1, x0:x1].copy()
            else:
                png = bytes(gt_buffer)
        if png is not None:
            gt = self._decode_png_gt(key, png, height, width)[y0:y1, x0:x1]
        window = PackedWindow(crop, min(length, plane1 * 8) - plane0 * 8, t0 - plane0 * 8, t1 - plane0 * 8)
        return window, gt

    def has_blurred(self, key: Optional[str] = None) -> bool:
        """Whether a sample (default: every sample) stores its defocused image (``<key>/blurred``).

        LMDBs written before the record existed have none; ``meta_info.txt`` says so without opening the LMDB.
        """
        keys = self.keys if key is None else [key]
        return all(bool(self._entry(k)[2].get('blurred')) for k in keys)

    def read_blurred(self,
                     key: str,
                     y0: int = 0,
                     y1: Optional[int] = None,
                     x0: int = 0,
                     x1: Optional[int] = None) -> np.ndarray:
        """The crop ``[y0:y1, x0:x1]`` of a sample's defocused image, uint8 (display-referred, like ``gt``).

        Raises:
            LMDBKeyError: If the sample has no ``blurred`` record (an LMDB prepared before it was stored: prepare it
                again with scripts/prepare_dpdd.py, pack_folder.py or make_demo_dataset.py).
        """
        meta = self.meta(key)
        height, width = meta['H'], meta['W']
        y1 = height if y1 is None else y1
        x1 = width if x1 is None else x1
        with self._txn(buffers=True) as txn:
            buffer = txn.get(f'{key}/blurred'.encode())
            if buffer is None or not meta.get('blurred'):
                raise LMDBKeyError(f'sample {key!r} of {self.path} stores no defocused image ({key}/blurred): the LMDB '
                                   'was prepared before that record existed; prepare it again (scripts/'
                                   'prepare_dpdd.py, pack_folder.py or make_demo_dataset.py) to train a learned '
                                   'spike front end on it')
            if len(buffer) != height * width:
                raise MetaInfoError(f'{self.path}: {key}/blurred holds {len(buffer)} bytes, not {height}x{width}')
            return np.frombuffer(buffer, np.uint8).reshape(height, width)[y0:y1, x0:x1].copy()

    def _decode_png_gt(self, key: str, png: bytes, height: int, width: int) -> np.ndarray:
        gt = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED) if png[:8] == PNG_SIGNATURE else None
        if gt is None or gt.shape != (height, width):
            found = f'{len(png)} bytes, neither raw {height}x{width} nor a PNG' if gt is None else f'shape {gt.shape}'
            raise MetaInfoError(f'{self.meta_info_path}: key {key!r} says H,W = {height},{width} but the stored '
                                f'{key}/gt has {found}')
        return gt
