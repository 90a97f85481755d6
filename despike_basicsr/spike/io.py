"""Spike-stream file formats: SpikeCV-style ``.dat``, the public ``.npz`` layouts, and time packing.

``.dat`` (SpikeCV, Spk2ImgNet, WGSE, Spike-Zoo and the camera itself) has no header: frames lie back to back, each
``ceil(H * W_row / 8)`` bytes, where ``W_row = W`` or ``W + 16`` for raw first-generation output with its 16-column
"head". Pixel ``p = r * W_row + c`` sits in byte ``p // 8`` at bit ``p % 8``, least significant bit first, and rows are
stored upside down, so readers flip them back (``flipud=True``) and writers flip before saving.

``.npz`` conventions: ``spk`` (T, H, W) 0/1; ``arr_0`` (H, W, T) 0/1; RSIR's ``seq`` (ceil(T/8), H, W) time-packed bytes
with ``length`` = T (frame ``t`` is bit ``t & 7`` of ``seq[t // 8]``), which is also :func:`pack_time`'s layout.
"""
import os
import warnings
from typing import Optional, Set, Tuple, Union

import numpy as np

from despike_basicsr.errors import DespikeUserError, DespikeUserWarning

from ._torch import is_tensor as _is_tensor

HEAD_COLUMNS = 16
DEFAULT_HEIGHT = 250
DEFAULT_WIDTH = 400
NPZ_KEYS = ('spk', 'arr_0', 'seq')

PathLike = Union[str, os.PathLike]
FrameRange = Union[None, slice, Tuple[Optional[int], Optional[int]]]


class SpikeFileError(DespikeUserError, ValueError):
    """A spike file that cannot be read as asked: wrong size, unknown layout, non-binary values or wrong dtype."""


def frame_bytes(height: int, width: int, head: bool = False) -> int:
    """Bytes one ``.dat`` frame takes: ``ceil(height * (width [+ 16]) / 8)`` (frames are padded to whole bytes)."""
    row = width + (HEAD_COLUMNS if head else 0)
    return (height * row + 7) // 8


def pack_bits_frame(frames: np.ndarray) -> np.ndarray:
    """Pack (N, H, W) 0/1 frames to (N, ceil(H*W/8)) bytes, pixel ``p = r*W + c`` at bit ``p % 8`` (LSB first)."""
    flat = np.ascontiguousarray(frames, dtype=np.uint8).reshape(frames.shape[0], -1)
    return np.packbits(flat, axis=1, bitorder='little')


def unpack_bits_frame(data: np.ndarray, height: int, width: int) -> np.ndarray:
    """Inverse of :func:`pack_bits_frame`: (N, ceil(H*W/8)) bytes to (N, H, W) uint8 0/1 (padding bits dropped)."""
    bits = np.unpackbits(np.asarray(data, dtype=np.uint8), axis=1, count=height * width, bitorder='little')
    return bits.reshape(data.shape[0], height, width)


def _frame_range(frames: FrameRange, total: int, path: PathLike) -> Tuple[int, int]:
    """Resolve ``frames`` (None, a step-1 slice or (start, stop)) against ``total`` frames, python-style negatives."""
    if frames is None:
        return 0, total
    if isinstance(frames, slice):
        if frames.step not in (None, 1):
            raise ValueError(f'{path}: frames slice must have step 1, got step {frames.step}')
        start, stop = frames.start, frames.stop
    elif isinstance(frames, (tuple, list)) and len(frames) == 2:
        start, stop = frames
    else:
        raise ValueError(f'{path}: frames must be a slice or (start, stop), got {frames!r}')
    start, stop, _ = slice(start, stop).indices(total)
    if stop <= start:
        raise ValueError(f'{path}: frame range {frames!r} selects no frames of the {total} in the file')
    return start, stop


def _check_binary_stream(spikes: np.ndarray, where: str) -> np.ndarray:
    """Validate a (T, H, W) 0/1 stream of bool/integer dtype and return it as uint8."""
    arr = np.asarray(spikes)
    if arr.dtype != np.bool_ and not np.issubdtype(arr.dtype, np.integer):
        raise SpikeFileError(f'{where}: expected a bool or integer 0/1 spike array, found dtype {arr.dtype}')
    if arr.ndim != 3:
        raise SpikeFileError(f'{where}: expected a (T, H, W) spike array, found shape {arr.shape}')
    if arr.size and arr.dtype != np.bool_:
        lo, hi = arr.min(), arr.max()
        if lo < 0 or hi > 1:
            raise SpikeFileError(f'{where}: expected binary 0/1 spike values, found values in [{lo}, {hi}]')
    return arr.astype(np.uint8, copy=False)


class PartialFrameWarning(DespikeUserWarning):
    """A ``.dat`` recording ends in part of a frame (a camera or a disk stopped mid-frame); whole frames are read."""


#: ``(file, size, frame bytes)`` already warned about, so a recording read window by window warns once.
_PARTIAL_WARNED: Set[Tuple[str, int, int]] = set()


def _settings_that_fit(size: int, height: int, width: int, head: bool) -> bool:
    """Whether ``size`` is a whole number of frames with ``head`` the other way or in the default 250×400 geometry:
    the usual wrong reader settings, which a file cut off mid-frame matches only by rare coincidence."""
    other = [frame_bytes(height, width, not head)]
    if (height, width) != (DEFAULT_HEIGHT, DEFAULT_WIDTH):
        other += [frame_bytes(DEFAULT_HEIGHT, DEFAULT_WIDTH, hd) for hd in (False, True)]
    return any(size % n == 0 for n in other)


def _dat_size_hint(size: int, height: int, width: int, head: bool) -> str:
    """Suggest reader settings that would fit a file of ``size`` bytes (the usual cause of a size mismatch)."""
    hints = []
    other = frame_bytes(height, width, not head)
    if size % other == 0:
        hints.append(f'head={not head} gives {size // other} frames')
    for h, w in ((250, 400), (1000, 1000), (256, 256), (720, 1280)):
        if (h, w) != (height, width):
            for hd in (False, True):
                if size % frame_bytes(h, w, hd) == 0:
                    hints.append(f'height={h}, width={w}, head={hd} gives {size // frame_bytes(h, w, hd)} frames')
    return ('; it would fit ' + ' or '.join(hints[:3])) if hints else ''


def read_dat(path: PathLike,
             height: int = DEFAULT_HEIGHT,
             width: int = DEFAULT_WIDTH,
             flipud: bool = True,
             head: bool = False,
             frames: FrameRange = None) -> np.ndarray:
    """Read a headerless ``.dat`` spike file into a (T, H, W) uint8 0/1 array.

    The file is memory-mapped, so ``frames`` reads only the bytes of that range from large recordings.

    Args:
        path: The ``.dat`` file.
        height: Frame height H.
        width: Frame width W (without the head columns).
        flipud: Flip rows back to upright (files store frames upside down).
        head: Rows carry 16 extra "head" columns (raw first-generation output); they are dropped.
        frames: A step-1 ``slice`` or ``(start, stop)`` of frames to read; ``None`` reads all.

    Returns:
        (T, H, W) uint8 array of 0/1.

    Raises:
        FileNotFoundError: No file at ``path``.
        SpikeFileError: Empty file, a file shorter than one frame, or a size that is not a whole number of frames of
            the given shape but is one with ``head`` the other way or in the default 250×400 geometry (wrong settings).

    Warns:
        PartialFrameWarning: Once per file, when it ends in part of a frame (a recording cut off mid-frame): the
            whole frames are read and the bytes left over are named.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f'{path}: height and width must be positive, got height={height}, width={width}')
    if not os.path.isfile(path):
        raise FileNotFoundError(f'{path}: no such spike file')
    size = os.path.getsize(path)
    nbytes = frame_bytes(height, width, head)
    if size == 0:
        raise SpikeFileError(f'{path}: empty file (expected a multiple of {nbytes} bytes per {height}x{width} frame)')
    total, left_over = divmod(size, nbytes)
    if left_over and (total == 0 or _settings_that_fit(size, height, width, head)):
        raise SpikeFileError(f'{path}: size {size} bytes is not a whole number of frames: expected a multiple of '
                             f'{nbytes} bytes for height={height}, width={width}, head={head}, found '
                             f'{total} frames + {left_over} bytes'
                             f'{_dat_size_hint(size, height, width, head)}')
    if left_over and (os.path.abspath(path), size, nbytes) not in _PARTIAL_WARNED:
        _PARTIAL_WARNED.add((os.path.abspath(path), size, nbytes))
        warnings.warn(PartialFrameWarning(
            f'{path}: ends in part of a frame ({left_over} bytes left over after {total} whole frames of {nbytes} '
            f'bytes, height={height}, width={width}, head={head}): a recording cut off mid-frame? Reading the '
            f'{total} whole frames{_dat_size_hint(size, height, width, head)}'), stacklevel=2)
    start, stop = _frame_range(frames, total, path)
    data = np.memmap(path, dtype=np.uint8, mode='r', offset=start * nbytes, shape=(stop - start, nbytes))
    row = width + (HEAD_COLUMNS if head else 0)
    spikes = unpack_bits_frame(data, height, row)
    del data
    if head:
        spikes = spikes[:, :, :width]
    if flipud:
        spikes = spikes[:, ::-1, :]
    return np.ascontiguousarray(spikes)


def write_dat(path: PathLike, spikes: np.ndarray, flipud: bool = True, head: bool = False,
              chunk_frames: int = 4096) -> None:
    """Write a (T, H, W) 0/1 stream as a ``.dat`` file that :func:`read_dat` (and SpikeCV) reads back bit-exactly.

    Args:
        path: Output file (overwritten).
        spikes: (T, H, W) bool/integer 0/1 array, or a uint8 torch tensor.
        flipud: Store rows upside down, as the camera does.
        head: Append 16 zero "head" columns to every row (raw camera layout).
        chunk_frames: Frames packed per write, bounding the temporary memory.
    """
    if _is_tensor(spikes):
        spikes = spikes.detach().cpu().numpy()
    arr = _check_binary_stream(spikes, f'write_dat({path})')
    with open(path, 'wb') as f:
        for t0 in range(0, arr.shape[0], chunk_frames):
            block = arr[t0:t0 + chunk_frames]
            if flipud:
                block = block[:, ::-1, :]
            if head:
                block = np.concatenate([block, np.zeros(block.shape[:2] + (HEAD_COLUMNS, ), np.uint8)], axis=2)
            pack_bits_frame(block).tofile(f)


def pack_time(spikes):
    """Pack a (T, H, W) 0/1 stream along time into (ceil(T/8), H, W) uint8: frame t is bit ``t % 8`` of plane t // 8.

    Works on numpy arrays and torch tensors (returns the same kind, on the same device). A leading batch axis is
    also accepted: (B, T, H, W) -> (B, ceil(T/8), H, W).
    """
    tensor = _is_tensor(spikes)
    if spikes.ndim not in (3, 4):
        raise ValueError(f'pack_time: expected (T, H, W) or (B, T, H, W), found shape {tuple(spikes.shape)}')
    t_axis = spikes.ndim - 3
    length = spikes.shape[t_axis]
    planes = (length + 7) // 8
    shape = list(spikes.shape)
    shape[t_axis] = planes
    if tensor:
        import torch
        src = spikes.to(torch.uint8)
        out = torch.zeros(shape, dtype=torch.uint8, device=spikes.device)
    else:
        src = np.asarray(spikes).astype(np.uint8, copy=False)
        out = np.zeros(shape, dtype=np.uint8)
    for bit in range(min(8, length)):
        frames = src[..., bit::8, :, :]
        n = frames.shape[t_axis]
        out[..., :n, :, :] |= frames << bit
    return out


def unpack_time(packed, length: int, t0: int = 0, t1: Optional[int] = None):
    """Unpack frames ``[t0, t1)`` of a stream packed by :func:`pack_time`; returns (t1 - t0, H, W) uint8 0/1.

    Only the byte planes that hold the requested frames are touched, so a loader can crop space (or time) first.
    numpy arrays and torch uint8 tensors are accepted (a tensor gives a tensor on its device); (B, P, H, W) too.
    """
    if packed.ndim not in (3, 4):
        raise ValueError(f'unpack_time: expected (P, H, W) or (B, P, H, W) packed bytes, found {tuple(packed.shape)}')
    t_axis = packed.ndim - 3
    planes = packed.shape[t_axis]
    if not 0 <= length <= 8 * planes or length < 8 * planes - 7:
        raise ValueError(f'unpack_time: length {length} does not fit {planes} byte planes '
                         f'(expected {max(0, 8 * planes - 7)}..{8 * planes})')
    t1 = length if t1 is None else t1
    if not 0 <= t0 <= t1 <= length:
        raise ValueError(f'unpack_time: frame range [{t0}, {t1}) is outside the stream of length {length}')
    p0, p1 = t0 // 8, (t1 + 7) // 8
    block = packed[..., p0:p1, :, :]
    shape = list(block.shape)
    shape[t_axis] = 8 * (p1 - p0)
    if _is_tensor(packed):
        import torch
        out = torch.empty(shape, dtype=torch.uint8, device=packed.device)
    else:
        out = np.empty(shape, dtype=np.uint8)
    for bit in range(8):
        out[..., bit::8, :, :] = (block >> bit) & 1
    return out[..., t0 - 8 * p0:t1 - 8 * p0, :, :]


def read_npz(path: PathLike, key: Optional[str] = None) -> np.ndarray:
    """Read a spike stream from an ``.npz`` file in any of the public layouts; returns (T, H, W) uint8 0/1.

    Args:
        path: The ``.npz`` file.
        key: ``'spk'`` (T, H, W), ``'arr_0'`` (H, W, T) or ``'seq'`` (time-packed, with ``length``); by default the
            first of these the file holds.

    Raises:
        FileNotFoundError: No file at ``path``.
        SpikeFileError: Not a readable ``.npz``, no known key, wrong shape/dtype or non-binary values.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f'{path}: no such spike file')
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as err:  # np.load raises several types for corrupt or truncated archives
        raise SpikeFileError(f'{path}: not a readable .npz archive ({type(err).__name__}: {err})') from err
    with archive:
        names = list(archive.files)
        if key is None:
            key = next((k for k in NPZ_KEYS if k in names), None)
            if key is None:
                raise SpikeFileError(f'{path}: no known spike key: expected one of {list(NPZ_KEYS)}, found {names}')
        elif key not in names:
            raise SpikeFileError(f'{path}: key {key!r} not in the archive, found {names}')
        try:
            data = archive[key]
            length = archive['length'] if key == 'seq' and 'length' in names else None
        except Exception as err:
            raise SpikeFileError(f'{path}: cannot read key {key!r} ({type(err).__name__}: {err})') from err
    where = f'{path} [{key}]'
    if key == 'seq':
        if length is None:
            raise SpikeFileError(f'{path}: time-packed key "seq" needs a "length" entry, found keys {names}')
        if data.dtype != np.uint8 or data.ndim != 3:
            raise SpikeFileError(f'{where}: expected (ceil(T/8), H, W) uint8 packed bytes, found '
                                 f'{data.dtype} {data.shape}')
        try:
            return np.ascontiguousarray(unpack_time(data, int(np.asarray(length).reshape(-1)[0])))
        except ValueError as err:
            raise SpikeFileError(f'{where}: {err}') from err
    if key == 'arr_0':
        if data.ndim != 3:
            raise SpikeFileError(f'{where}: expected an (H, W, T) spike array, found shape {data.shape}')
        data = np.moveaxis(data, -1, 0)
    return np.ascontiguousarray(_check_binary_stream(data, where))


def write_npz(path: PathLike, spikes: np.ndarray, layout: str = 'spk') -> None:
    """Write a (T, H, W) 0/1 stream as a compressed ``.npz`` in layout ``'spk'``, ``'arr_0'`` or ``'seq'``."""
    if _is_tensor(spikes):
        spikes = spikes.detach().cpu().numpy()
    arr = _check_binary_stream(spikes, f'write_npz({path})')
    if layout == 'spk':
        np.savez_compressed(path, spk=arr)
    elif layout == 'arr_0':
        np.savez_compressed(path, np.ascontiguousarray(np.moveaxis(arr, 0, -1)))
    elif layout == 'seq':
        np.savez_compressed(path, seq=pack_time(arr), length=np.int64(arr.shape[0]))
    else:
        raise ValueError(f"write_npz: layout must be 'spk', 'arr_0' or 'seq', got {layout!r}")


def load_spikes(path: PathLike,
                height: Optional[int] = None,
                width: Optional[int] = None,
                flipud: bool = True,
                head: bool = False,
                frames: FrameRange = None,
                key: Optional[str] = None) -> np.ndarray:
    """Read a ``.dat`` or ``.npz`` spike stream, chosen by extension; returns (T, H, W) uint8 0/1.

    ``height``/``width`` (default 250x400), ``flipud`` and ``head`` apply to ``.dat``; ``key`` to ``.npz``, whose
    shape comes from the file (a given height/width is then checked against it). ``frames`` works for both.
    """
    ext = os.path.splitext(str(path))[1].lower()
    if ext == '.dat':
        return read_dat(path, height or DEFAULT_HEIGHT, width or DEFAULT_WIDTH, flipud=flipud, head=head,
                        frames=frames)
    if ext == '.npz':
        spikes = read_npz(path, key=key)
        for name, want, found in (('height', height, spikes.shape[1]), ('width', width, spikes.shape[2])):
            if want is not None and want != found:
                raise SpikeFileError(f'{path}: expected {name} {want}, found {found} (shape {spikes.shape})')
        start, stop = _frame_range(frames, spikes.shape[0], path)
        return spikes[start:stop]
    raise SpikeFileError(f'{path}: unknown spike file extension {ext!r}: expected .dat or .npz')


class RecordingReader:
    """A spike recording read window by window: ``.dat`` through memory-mapped frame ranges, ``.npz`` once.

    (``.npz`` members are zip entries, possibly compressed, so they cannot be memory-mapped.) A long ``.dat``
    recording therefore never sits in memory; ``despike-infer`` reads one network window at a time.

    Args:
        path: The ``.dat`` or ``.npz`` recording.
        height: ``.dat`` frame height (default 250); checked against a ``.npz`` when given.
        width: ``.dat`` frame width (default 400); checked against a ``.npz`` when given.
        flipud: ``.dat`` rows are stored upside down (flip them back).
        head: ``.dat`` rows carry the 16-column head of raw camera output.
        key: ``.npz`` key (default ``spk``, ``arr_0`` or ``seq``, whichever is present).

    Attributes:
        frames: Number of frames T.
        height: Frame height H.
        width: Frame width W.

    Raises:
        FileNotFoundError: No file at ``path``.
        SpikeFileError: An unknown extension, or a file that does not hold frames of the given size.
    """

    def __init__(self,
                 path: PathLike,
                 height: Optional[int] = None,
                 width: Optional[int] = None,
                 flipud: bool = True,
                 head: bool = False,
                 key: Optional[str] = None) -> None:
        self.path = path
        ext = os.path.splitext(str(path))[1].lower()
        if not os.path.isfile(path):
            raise FileNotFoundError(f'{path}: no such recording')
        self._array = None
        self._kwargs = dict(height=height, width=width, flipud=flipud, head=head, key=key)
        if ext == '.dat':
            self.height = height or DEFAULT_HEIGHT
            self.width = width or DEFAULT_WIDTH
            load_spikes(path, frames=(0, 1), **self._kwargs)  # validates the size against the frame shape
            self.frames = os.path.getsize(path) // frame_bytes(self.height, self.width, head)
        elif ext == '.npz':
            self._array = load_spikes(path, **self._kwargs)
            self.frames, self.height, self.width = self._array.shape
        else:
            raise SpikeFileError(f'{path}: unknown recording extension {ext!r}: expected .dat or .npz')

    def read(self, start: int, stop: int) -> np.ndarray:
        """Frames ``[start, stop)`` as (T, H, W) uint8 0/1."""
        if self._array is not None:
            return self._array[start:stop]
        return load_spikes(self.path, frames=(start, stop), **self._kwargs)
