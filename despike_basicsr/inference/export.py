"""ONNX export of a trained DeSpikeNet (``despike-export``) and a parity check against PyTorch with onnxruntime.

The exported graph reconstructs the frame at ``T // 2`` of one fixed-size stream:

- input ``spikes``: uint8 ``(1, T, H, W)``, 0/1, time-major, ``T`` = the network's longest window
  (``frames_needed``, 192 for the shipped weights);
- input ``gamma``: float32 ``(1, 1, H, W)``, the per-pixel FPN factor γ (all ones without a calibration);
- output ``image``: float32 ``(1, 1, H, W)``, the network's output as it is (display-referred, not clipped).

H and W are fixed at export (``--height``, ``--width``). onnx and onnxruntime are an optional extra
(``pip install -e ".[onnx]"``, which ``scripts/install.sh`` installs); see docs/inference.md, "ONNX export".
"""
import argparse
import os
import os.path as osp
import sys
import warnings
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from despike_basicsr.errors import DespikeUserError, run_cli

PROG = 'despike-export'
#: Kernel-bank forms (:data:`despike_basicsr.archs.despike_blocks.BANK_IMPLS`) the exporter writes: single-channel
#: maps through the m kernels. The grouped forms build their weight by broadcasting, which the TorchScript-based
#: exporter cannot give a static shape; the space-to-depth form exports but onnxruntime 1.32 rejects a reshape of it
#: at some sizes (and ran it slower: 797 against 453 ms at 250×400, one thread).
EXPORT_BANK_IMPLS = ('direct', )
DEFAULT_BANK_IMPL = 'direct'
DEFAULT_OPSET = 17


class ExportError(DespikeUserError):
    """Weights, sizes or packages that do not allow an export; the message says what to change."""


class SpikesToImage(nn.Module):
    """``(spikes, gamma)`` → image: the traced signature of the exported graph.

    Args:
        net: A DeSpikeNet in eval mode.
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, spikes: Tensor, gamma: Tensor) -> Tensor:
        return self.net(spikes, gamma)


@dataclass
class ExportResult:
    """What :func:`export_onnx` wrote: the file, the input shapes and the parity figures (``None`` unchecked)."""
    path: str
    spikes_shape: tuple
    gamma_shape: tuple
    max_abs_diff: Optional[float] = None
    output_range: Optional[float] = None

    @property
    def relative_diff(self) -> Optional[float]:
        """Largest |onnxruntime − PyTorch| over the PyTorch output's range (max − min)."""
        if self.max_abs_diff is None:
            return None
        return self.max_abs_diff / max(self.output_range, 1e-12)


def random_inputs(net: nn.Module, height: int, width: int, seed: int = 0, rate: float = 0.3) -> tuple:
    """A random 0/1 uint8 stream ``(1, T, H, W)`` (T = ``net.frames_needed``) and a γ map near 1 ``(1, 1, H, W)``."""
    rng = np.random.default_rng(seed)
    spikes = (rng.random((1, net.frames_needed, height, width)) < rate).astype(np.uint8)
    gamma = rng.uniform(0.9, 1.1, (1, 1, height, width)).astype(np.float32)
    return torch.from_numpy(spikes), torch.from_numpy(gamma)


def load_for_export(weights: Optional[str] = None, opt_path: Optional[str] = None) -> nn.Module:
    """The DeSpikeNet of ``weights`` (default: the shipped pretrained model), eval mode, on the CPU."""
    from despike_basicsr.inference.network import DEFAULT_OPT, PRETRAINED_WEIGHTS, ReconstructorError, load_network
    weights = weights or PRETRAINED_WEIGHTS
    if not osp.isfile(weights):
        raise ExportError(f'{weights}: weights file not found')
    try:
        net, _, _ = load_network(weights, opt_path=opt_path, fallback_opt_path=DEFAULT_OPT)
    except ReconstructorError as err:
        raise ExportError(str(err)) from None
    if not hasattr(net, 'frames_needed'):
        raise ExportError(f'{weights}: not a DeSpikeNet checkpoint ({type(net).__name__})')
    return net


def export_onnx(out: str,
                weights: Optional[str] = None,
                height: int = 250,
                width: int = 400,
                opt_path: Optional[str] = None,
                opset: int = DEFAULT_OPSET,
                bank_impl: str = DEFAULT_BANK_IMPL,
                check: bool = True,
                seed: int = 0) -> ExportResult:
    """Export a trained DeSpikeNet to ONNX for one ``height`` × ``width`` and, with ``check``, compare onnxruntime's
    output with PyTorch's on a random stream.

    Args:
        out: Path of the ``.onnx`` file to write.
        weights: Checkpoint (default: the shipped ``despike_basicsr/weights/despike_general.pth``).
        height: Frame height H of the graph.
        width: Frame width W of the graph.
        opt_path: Options file naming the network, for checkpoints that do not store ``network_g``.
        opset: ONNX opset version.
        bank_impl: The kernel bank's form in the graph (:data:`EXPORT_BANK_IMPLS`).
        check: Run the graph with onnxruntime on a random stream and compare with PyTorch.
        seed: Seed of that stream.

    Returns:
        An :class:`ExportResult`.

    Raises:
        ExportError: Bad sizes, weights that do not load, or onnx/onnxruntime missing.
    """
    from despike_basicsr.archs import despike_blocks
    if height < 1 or width < 1:
        raise ExportError(f'--height and --width must be positive, got {height}x{width}')
    if bank_impl not in EXPORT_BANK_IMPLS:
        raise ExportError(f'bank_impl must be one of {", ".join(EXPORT_BANK_IMPLS)}, got {bank_impl!r}')
    folder = osp.dirname(osp.abspath(out))
    if not osp.isdir(folder):
        raise ExportError(f'{out}: output folder {folder} does not exist')
    try:
        import onnx  # noqa: F401  (torch.onnx needs it)
    except ImportError:
        raise ExportError('ONNX export needs the onnx extra: pip install -e ".[onnx]" (or bash scripts/install.sh)')
    net = load_for_export(weights, opt_path)
    spikes, gamma = random_inputs(net, height, width, seed)
    wrapper = SpikesToImage(net).eval()
    despike_blocks.set_bank_implementation(bank_impl)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # the shapes are fixed: the tracer's notes on Python values taken from shapes, and the notice that this
            # is the TorchScript-based exporter (torch 2.14 keeps it; the graph is checked below), say nothing new
            warnings.simplefilter('ignore', torch.jit.TracerWarning)
            warnings.filterwarnings('ignore', category=DeprecationWarning, module=r'torch\.onnx')
            warnings.filterwarnings('ignore', message='Constant folding', category=UserWarning)
            torch.onnx.export(
                wrapper, (spikes, gamma),
                out,
                input_names=['spikes', 'gamma'],
                output_names=['image'],
                opset_version=opset,
                dynamo=False,
                do_constant_folding=True)
            expected = wrapper(spikes, gamma).numpy() if check else None
    finally:
        despike_blocks.set_bank_implementation(None)
    result = ExportResult(out, tuple(spikes.shape), tuple(gamma.shape))
    if check:
        got = run_onnx(out, spikes.numpy(), gamma.numpy())
        result.max_abs_diff = float(np.abs(got - expected).max())
        result.output_range = float(expected.max() - expected.min())
    return result


def onnx_session(path: str, threads: Optional[int] = None):
    """An onnxruntime CPU session of ``path`` (``threads`` intra-op threads, default onnxruntime's)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise ExportError('running the graph needs the onnx extra: pip install -e ".[onnx]"') from None
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(path, options, providers=['CPUExecutionProvider'])


def run_onnx(path: str, spikes: np.ndarray, gamma: np.ndarray, session=None) -> np.ndarray:
    """Run an exported graph: uint8 ``(1, T, H, W)`` spikes and float32 ``(1, 1, H, W)`` γ → ``(1, 1, H, W)``."""
    session = session or onnx_session(path)
    return session.run(['image'], {'spikes': spikes.astype(np.uint8), 'gamma': gamma.astype(np.float32)})[0]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description='Export a trained DeSpike to ONNX (one frame size) and check it against PyTorch.')
    parser.add_argument('--weights', help='checkpoint (default: the shipped pretrained model)')
    parser.add_argument('--opt', help='options file naming the network, if the checkpoint does not store it')
    parser.add_argument('--height', type=int, default=250, help='frame height of the graph (default 250)')
    parser.add_argument('--width', type=int, default=400, help='frame width of the graph (default 400)')
    parser.add_argument('--out', required=True, help='output .onnx file')
    parser.add_argument('--opset', type=int, default=DEFAULT_OPSET, help=f'ONNX opset (default {DEFAULT_OPSET})')
    parser.add_argument('--overwrite', action='store_true', help='replace an existing --out')
    parser.add_argument('--no-check', action='store_true', help='skip the onnxruntime parity check')
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console entry ``despike-export``; returns the exit status (0, or 2 on bad input)."""
    args = build_parser().parse_args(argv)

    def work() -> int:
        if not args.out.endswith('.onnx'):
            raise ExportError(f'{args.out}: output must end in .onnx')
        if os.path.exists(args.out) and not args.overwrite:
            raise ExportError(f'{args.out}: exists; pass --overwrite to replace it')
        result = export_onnx(
            args.out, args.weights, args.height, args.width, args.opt, args.opset, check=not args.no_check)
        print(f'wrote {result.path}: spikes uint8 {result.spikes_shape}, gamma float32 {result.gamma_shape} -> '
              f'image float32 (1, 1, {args.height}, {args.width})')
        if result.max_abs_diff is not None:
            print(f'onnxruntime vs PyTorch on a random stream: max |diff| {result.max_abs_diff:.3g}, output range '
                  f'{result.output_range:.3g}, relative {result.relative_diff:.3g} (limit 1e-3)')
            if result.relative_diff > 1e-3:
                raise ExportError(f'{result.path}: onnxruntime differs from PyTorch by {result.relative_diff:.3g} '
                                  'of the output range (limit 1e-3)')
        return 0

    return run_cli(PROG, work)


if __name__ == '__main__':
    sys.exit(main())
