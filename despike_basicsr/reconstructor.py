"""DeSpikeReconstructor: a sharp image from a spike stream in a few lines of Python (the library behind despike-infer).

Example::

    from despike_basicsr.reconstructor import DeSpikeReconstructor
    from despike_basicsr.spike.io import load_spikes

    spikes = load_spikes('rec.dat', height=250, width=400)          # (T, H, W) uint8
    reconstructor = DeSpikeReconstructor()                           # the shipped pretrained weights, CPU or CUDA
    image = reconstructor.reconstruct(spikes)                        # (H, W) float32 in [0, 1], frame T // 2

By default the frame is auto-exposed (:mod:`despike_basicsr.display`): the same scene shows at the same brightness at
any light level and highlights roll off instead of clipping; ``exposure='fixed'`` gives the reference camera's scale.

``weights`` takes any checkpoint this project trained (it stores the ``network_g`` options that built it); other
checkpoints need ``network_opt`` (a ``network_g`` dict) or ``opt_path`` (an options file), unless they lie in a BasicSR
experiment folder that holds the options file they were trained with (:func:`resolve_network_options` has the one
order every caller uses). Large frames run tile by tile (``tile``); the exposure level of an exposure-normalised
network is measured on the whole frame first, so the tiles agree on one display scale.

``despike-infer`` (:mod:`despike_basicsr.infer`) is the command line over this module; ``scripts/bench_inference.py``
and ``scripts/gpu_check.py`` build their networks through :func:`build_network_from_options`.
"""
import glob
import os.path as osp
from typing import Any, Callable, Dict, Optional, Tuple, Union

import numpy as np
import torch

from despike_basicsr.errors import DespikeUserError
from despike_basicsr.checkpoint import CheckpointError, check_fits, safe_torch_load, state_dict_from_checkpoint
from despike_basicsr.display import Exposure, expose, parse_exposure
from despike_basicsr.tiling import tiled_apply

#: The pretrained general-purpose DeSpike shipped inside the package (docs/pretrained.md).
PRETRAINED_WEIGHTS = osp.join(osp.dirname(osp.abspath(__file__)), 'weights', 'despike_general.pth')
#: The repository checkout this package lies in (its ``options/`` exist only in a checkout or an editable install).
REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
#: The paper-setting test options of the repository: ``despike-infer``'s last resort for a checkpoint that does not
#: name its network, and ``scripts/bench_inference.py``'s network.
DEFAULT_OPT = osp.join(REPO_ROOT, 'options', 'test_despike_dpdd.yml')

Array = Union[np.ndarray, torch.Tensor]


class ReconstructorError(DespikeUserError, ValueError):
    """Weights, options or input that cannot be used; the message names the file or argument."""


def read_network_options(opt_path: str) -> Dict[str, Any]:
    """The ``network_g`` section of a BasicSR options file (:func:`despike_basicsr.options.read_network_options`),
    with its errors as :class:`ReconstructorError`."""
    from despike_basicsr import options
    try:
        return options.read_network_options(opt_path)
    except options.OptionsError as err:
        raise ReconstructorError(str(err)) from None


def experiment_options_file(weights: str) -> Optional[str]:
    """The options file BasicSR copied into the experiment folder ``weights`` was saved in, if any.

    BasicSR saves ``experiments/<name>/models/net_g_<iter>.pth`` and copies the options file that started the run into
    ``experiments/<name>/``. Files there without a ``network_g`` section are ignored.

    Returns:
        The path, or ``None`` when ``weights`` does not lie in a ``models/`` folder or no options file is beside it.

    Raises:
        ReconstructorError: When the experiment folder holds options files with different ``network_g`` sections.
    """
    from despike_basicsr import options
    models = osp.dirname(osp.abspath(weights))
    if osp.basename(models) != 'models':
        return None
    found = {}
    for path in sorted(glob.glob(osp.join(osp.dirname(models), '*.yml')) +
                       glob.glob(osp.join(osp.dirname(models), '*.yaml'))):
        try:
            found[path] = options.read_network_options(path)
        except options.OptionsError:
            continue
    if not found:
        return None
    first = next(iter(found))
    if any(network_opt != found[first] for network_opt in found.values()):
        raise ReconstructorError(f'{weights}: its experiment folder holds options files with different network_g '
                                 f'({", ".join(sorted(found))}); pass the one the weights were trained with '
                                 '(--opt / opt_path)')
    return first


def resolve_network_options(weights: str,
                            checkpoint: Any,
                            network_opt: Optional[Dict[str, Any]] = None,
                            opt_path: Optional[str] = None,
                            fallback_opt_path: Optional[str] = None) -> Tuple[Dict[str, Any], str]:
    """Which ``network_g`` built ``weights``: the one resolution order of the package.

    1. ``network_opt``, else ``opt_path``'s ``network_g`` (what the caller says wins);
    2. the ``network_g`` stored in the checkpoint (every checkpoint this project saves has one);
    3. the options file in the checkpoint's BasicSR experiment folder (:func:`experiment_options_file`);
    4. ``fallback_opt_path`` when given (``despike-infer`` passes :data:`DEFAULT_OPT`);
    5. otherwise an error naming what to pass.

    Args:
        weights: Checkpoint path (for the experiment folder and messages).
        checkpoint: The loaded checkpoint.
        network_opt: A ``network_g`` dict.
        opt_path: An options file to take ``network_g`` from.
        fallback_opt_path: An options file to use when nothing above names the network.

    Returns:
        ``(network_g, source)``, ``source`` saying where it came from (messages, reports).

    Raises:
        ReconstructorError: When no source names the network, or an options file cannot be read.
    """
    if network_opt is not None:
        return dict(network_opt), 'network_opt'
    if opt_path is not None:
        return read_network_options(opt_path), opt_path
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get('network_g'), dict):
        return dict(checkpoint['network_g']), f'network_g stored in {weights}'
    experiment_opt = experiment_options_file(weights)
    if experiment_opt is not None:
        return read_network_options(experiment_opt), experiment_opt
    if fallback_opt_path is not None:
        if not osp.isfile(fallback_opt_path):
            raise ReconstructorError(f'{fallback_opt_path}: default options file missing and {weights} stores no '
                                     'network_g; pass --opt with the options file the weights were trained with')
        return read_network_options(fallback_opt_path), fallback_opt_path
    raise ReconstructorError(f'{weights}: the checkpoint does not say which network built it (no network_g '
                             'stored); pass the options file it was trained with (--opt / opt_path)')


def build_network_from_options(network_opt: Dict[str, Any], source: str = 'network_opt') -> torch.nn.Module:
    """BasicSR's ``build_network`` after :func:`despike_basicsr.register`, its errors as :class:`ReconstructorError`.

    Args:
        network_opt: A ``network_g`` dict (``type`` and the constructor's arguments).
        source: Where the options came from, for the message.
    """
    import despike_basicsr
    despike_basicsr.register()  # compat before basicsr loads; fills BasicSR's registries
    from basicsr.archs import build_network
    try:
        return build_network(dict(network_opt))
    except Exception as err:  # the registry and the constructors raise several types
        raise ReconstructorError(f'{source}: cannot build network_g {network_opt.get("type")!r} '
                                 f'({type(err).__name__}: {err})') from None


def load_network(weights: str,
                 network_opt: Optional[Dict[str, Any]] = None,
                 opt_path: Optional[str] = None,
                 param_key: Optional[str] = None,
                 device: Union[str, torch.device] = 'cpu',
                 fallback_opt_path: Optional[str] = None) -> Tuple[torch.nn.Module, Dict[str, Any], str]:
    """Build the network a checkpoint was trained as and load its weights (strictly, in eval mode).

    Which ``network_g``: :func:`resolve_network_options` (``network_opt``, ``opt_path``, the checkpoint's own, the
    experiment folder's options file, ``fallback_opt_path``).

    Returns:
        ``(network, network_g options, where the options came from)``.

    Raises:
        ReconstructorError: When no options are known or the weights do not fit the network (keys and shapes listed).
    """
    try:
        checkpoint = safe_torch_load(weights, what='weights file')
        state = state_dict_from_checkpoint(checkpoint, weights, param_key, require_key=param_key is not None)
    except CheckpointError as err:
        raise ReconstructorError(str(err)) from None
    network_opt, source = resolve_network_options(weights, checkpoint, network_opt, opt_path, fallback_opt_path)
    net = build_network_from_options(network_opt, source)
    try:
        check_fits(net, state, weights, source)
    except CheckpointError as err:
        raise ReconstructorError(str(err)) from None
    net.load_state_dict(state, strict=True)
    return net.to(device).eval(), dict(network_opt), source


def select_device(name: Optional[str] = None) -> torch.device:
    """``name`` (``cpu``, ``cuda``, ``cuda:1``), or CUDA when available."""
    if name:
        if name.startswith('cuda') and not torch.cuda.is_available():
            raise ReconstructorError(f'device {name!r}: no CUDA device is available to torch on this machine')
        return torch.device(name)
    return torch.device('cuda' if torch.cuda.is_available() else 'cpu')


def reconstruct_tiled(net: torch.nn.Module,
                      spikes: torch.Tensor,
                      gamma: Optional[torch.Tensor],
                      tile: int,
                      overlap: int,
                      device: torch.device,
                      progress: Optional[Callable[[int], Any]] = None) -> torch.Tensor:
    """``net`` over a ``(1, T, H, W)`` window tile by tile (:func:`~despike_basicsr.tiling.tiled_apply`).

    Tiles go to ``device`` one at a time, so device memory is bounded by the tile. An exposure-normalised network
    gets the exposure level of the whole frame (``net.stream_exposure``) for every tile, so the tiles share one display
    scale. A network returning a list of images contributes its last one.
    """
    exposure = None
    if getattr(net, 'exposure_norm', False):
        exposure = net.stream_exposure(spikes.to(device), None if gamma is None else gamma.to(device))

    def run_tile(tile_spikes: torch.Tensor, tile_gamma: Optional[torch.Tensor]) -> torch.Tensor:
        tile_spikes = tile_spikes.to(device)
        tile_gamma = None if tile_gamma is None else tile_gamma.to(device)
        result = net(tile_spikes, tile_gamma) if exposure is None else net(tile_spikes, tile_gamma, exposure=exposure)
        return result[-1] if isinstance(result, (list, tuple)) else result

    return tiled_apply(run_tile, [spikes, gamma], tile=tile, overlap=overlap,
                       size_multiple=int(getattr(net, 'size_multiple', 1)), progress=progress)


class DeSpikeReconstructor:
    """Reconstruct sharp frames from ``(T, H, W)`` spike streams with a trained network.

    Args:
        weights: Checkpoint path; ``None`` takes the shipped pretrained weights (:data:`PRETRAINED_WEIGHTS`).
        network_opt: ``network_g`` options that built the weights (default: stored in the checkpoint).
        opt_path: Options file to take ``network_g`` from instead.
        param_key: Checkpoint key of the weights (default ``params_ema``, else ``params``).
        device: ``cpu``, ``cuda``, ... (default CUDA when available).
        tile: Tile size in pixels for large frames (0: the whole frame at once).
        tile_overlap: Overlap of neighbouring tiles in pixels.
        fallback_opt_path: Options file for a checkpoint that nothing else names the network of
            (:func:`resolve_network_options`; ``despike-infer`` passes :data:`DEFAULT_OPT`).
    """

    def __init__(self,
                 weights: Optional[str] = None,
                 network_opt: Optional[Dict[str, Any]] = None,
                 opt_path: Optional[str] = None,
                 param_key: Optional[str] = None,
                 device: Optional[str] = None,
                 tile: int = 0,
                 tile_overlap: int = 32,
                 fallback_opt_path: Optional[str] = None) -> None:
        if tile < 0 or tile_overlap < 0 or (tile and tile_overlap >= tile):
            raise ReconstructorError(f'tile ({tile}) and tile_overlap ({tile_overlap}) must be >= 0, with the '
                                     'overlap smaller than the tile')
        self.weights = weights or PRETRAINED_WEIGHTS
        if weights is None and not osp.isfile(self.weights):
            raise ReconstructorError(f'{self.weights}: the pretrained weights are missing from this installation; '
                                     'pass weights= (or --weights)')
        self.device = select_device(device)
        self.net, self.network_opt, self.network_source = load_network(self.weights, network_opt, opt_path, param_key,
                                                                       self.device, fallback_opt_path)
        self.tile, self.tile_overlap = tile, tile_overlap

    @property
    def min_stream_len(self) -> int:
        """Shortest stream the network accepts (DeSpikeNet: 8 steps, or its smallest window if shorter)."""
        return int(getattr(self.net, 'min_stream_len', 1))

    @property
    def frames_needed(self) -> int:
        """Frames around the target the network reads (its longest window)."""
        return int(getattr(self.net, 'frames_needed', self.min_stream_len))

    @torch.inference_mode()
    def reconstruct_window(self,
                           window: torch.Tensor,
                           gamma: Optional[torch.Tensor] = None,
                           progress: Optional[Callable[[int], Any]] = None) -> torch.Tensor:
        """The network's image of exactly ``window``: the middle frame of a ``(1, T, H, W)`` 0/1 stream.

        The caller chose the frames (``despike-infer`` reads them window by window from a file); tiles as set up.

        Args:
            window: ``(1, T, H, W)`` spikes (any dtype; uint8 keeps the copies small).
            gamma: ``(1, 1, H, W)`` FPN correction γ, or ``None``.
            progress: Called with 1 after every tile.

        Returns:
            ``(1, 1, H, W)`` display-referred image on :attr:`device`, not clipped.
        """
        return reconstruct_tiled(self.net, window, gamma, self.tile, self.tile_overlap, self.device, progress)

    @torch.inference_mode()
    def reconstruct(self,
                    spikes: Array,
                    gamma: Optional[Array] = None,
                    centre: Optional[int] = None,
                    clip: bool = True,
                    exposure: Exposure = 'auto') -> np.ndarray:
        """The sharp frame at ``centre`` (default ``T // 2``) of one stream.

        Args:
            spikes: ``(T, H, W)`` 0/1 stream (numpy or torch, any integer or bool dtype).
            gamma: ``(H, W)`` FPN correction γ (``spike.fpn``), or ``None``.
            centre: Target frame; the network reads :attr:`frames_needed` frames centred on it (fewer near the ends
                of the stream).
            clip: Return the image ready to show, in [0, 1] (rolled off, :func:`~despike_basicsr.display.expose`);
                False returns the float display values after the exposure gain alone, nothing compressed or clipped.
            exposure: ``'auto'`` (default: the frame's median brought to mid-grey, highlights rolled off),
                ``'fixed'`` (the reference camera's scale: an exposure-normalised network shows a brightly lit scene
                as that camera would, which can exceed 1; ``scripts/evaluate_heldout.py`` uses it unclipped) or a
                linear gain on that scale.

        Returns:
            ``(H, W)`` float32 display-referred image, in [0, 1] when ``clip``.
        """
        stream = torch.as_tensor(np.asarray(spikes) if not torch.is_tensor(spikes) else spikes)
        if stream.dim() != 3:
            raise ReconstructorError(f'spikes must be shaped (T, H, W), got {tuple(stream.shape)}')
        length, height, width = stream.shape
        centre = length // 2 if centre is None else int(centre)
        if not 0 <= centre < length:
            raise ReconstructorError(f'centre {centre} is outside the stream of {length} frames')
        # the network reconstructs the middle frame of what it reads: a window centred on `centre`, shortened
        # symmetrically near the ends of the stream
        half = min(self.frames_needed // 2, centre, length - centre)
        window = stream[centre - half:centre + half]
        if window.shape[0] < self.min_stream_len:
            raise ReconstructorError(f'frame {centre} of a {length}-frame stream leaves {window.shape[0]} frames '
                                     f'centred on it; the network needs at least {self.min_stream_len}')
        window = window.to(torch.uint8)[None]
        gamma_map = None
        if gamma is not None:
            gamma_map = torch.as_tensor(np.asarray(gamma, dtype=np.float32)).to(self.device)
            if gamma_map.shape != (height, width):
                raise ReconstructorError(f'gamma must be shaped ({height}, {width}), got {tuple(gamma_map.shape)}')
            gamma_map = gamma_map[None, None]
        exposure = parse_exposure(exposure)
        image = self.reconstruct_window(window, gamma_map)[0, 0].float().cpu().numpy()
        shown, kept, _ = expose(image, exposure)
        return shown if clip else kept

    def defocus_map(self,
                    spikes: Array,
                    gamma: Optional[Array] = None,
                    centre: Optional[int] = None,
                    weights: Optional[str] = None) -> np.ndarray:
        """How defocused each pixel is at ``centre``: ``(H, W)`` float32 Gaussian σ in pixels.

        A separate network (:class:`~despike_basicsr.defocus_map.DefocusMapEstimator`, the shipped
        ``weights/defocus_map.pth`` unless ``weights`` names another) reads the same stream, on this reconstructor's
        device and tiles; the reconstructed image does not depend on it.
        """
        from despike_basicsr.defocus_map import DEFOCUS_WEIGHTS, DefocusMapEstimator
        estimator = getattr(self, '_defocus_estimator', None)
        if estimator is None or estimator.weights != (weights or DEFOCUS_WEIGHTS):
            estimator = DefocusMapEstimator(weights, self.device, self.tile, self.tile_overlap)
            self._defocus_estimator = estimator
        return estimator.estimate(spikes, gamma, centre)
