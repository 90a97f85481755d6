"""What every reconstructor shares: which network a checkpoint was trained as, building and loading it, the device,
and running it tile by tile.

:func:`resolve_network_options` is the one order in which the package finds a checkpoint's ``network_g`` (the caller's
``network_opt`` / ``opt_path``, the options stored in the checkpoint, the options file in its BasicSR experiment
folder, a fallback file, else an error naming ``--opt``); :func:`load_network` builds that network and loads the
weights strictly; :func:`reconstruct_tiled` runs it over a window tile by tile on one display scale.
:class:`~despike_basicsr.inference.reconstructor.DeSpikeReconstructor`,
:class:`~despike_basicsr.inference.defocus_map.DefocusMapEstimator`, ``despike-export`` and the benchmarks build on
this module; it imports none of them.
"""
import glob
import os.path as osp
from typing import Any, Callable, Dict, Optional, Tuple, Union

import torch

from despike_basicsr import options_file
from despike_basicsr.checkpoint import CheckpointError, check_fits, safe_torch_load, state_dict_from_checkpoint
from despike_basicsr.errors import DespikeUserError
from despike_basicsr.inference.tiling import tiled_apply

#: The installed package folder (its ``weights/`` hold the shipped networks).
PACKAGE_DIR = osp.dirname(osp.dirname(osp.abspath(__file__)))
#: The pretrained general-purpose DeSpike shipped inside the package (docs/pretrained.md).
PRETRAINED_WEIGHTS = osp.join(PACKAGE_DIR, 'weights', 'despike_general.pth')
#: The repository checkout this package lies in (its ``options/`` exist only in a checkout or an editable install).
REPO_ROOT = osp.dirname(PACKAGE_DIR)
#: The paper-setting test options of the repository: ``despike-infer``'s last resort for a checkpoint that does not
#: name its network, and ``scripts/bench_inference.py``'s network.
DEFAULT_OPT = osp.join(REPO_ROOT, 'options', 'test_despike_dpdd.yml')


class ReconstructorError(DespikeUserError, ValueError):
    """Weights, options or input that cannot be used; the message names the file or argument."""


def read_network_options(opt_path: str) -> Dict[str, Any]:
    """The ``network_g`` section of a BasicSR options file (:func:`despike_basicsr.options_file.read_network_options`),
    with its errors as :class:`ReconstructorError`."""
    try:
        return options_file.read_network_options(opt_path)
    except options_file.OptionsError as err:
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
    models = osp.dirname(osp.abspath(weights))
    if osp.basename(models) != 'models':
        return None
    found = {}
    for path in sorted(glob.glob(osp.join(osp.dirname(models), '*.yml')) +
                       glob.glob(osp.join(osp.dirname(models), '*.yaml'))):
        try:
            found[path] = options_file.read_network_options(path)
        except options_file.OptionsError:
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
    """``net`` over a ``(1, T, H, W)`` window tile by tile (:func:`~despike_basicsr.inference.tiling.tiled_apply`).

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
