"""Reading a BasicSR options file: the one YAML reader of the package, its entries and its scripts.

Every layer above the registries reads options files (the options check before training, the reconstructor for a
checkpoint's ``network_g``, the benchmarks), so the reader lives here, beside the errors it raises;
:mod:`despike_basicsr.training.options` checks what it read.
"""
from os import path as osp
from typing import Any, Dict

import yaml

from despike_basicsr.errors import DespikeUserError


class OptionsError(DespikeUserError, ValueError):
    """An options file that cannot run; the message names the file and the key."""


def load_options_file(path: str) -> Dict[str, Any]:
    """Read an options YAML file: the one options reader of the package, the entries and the scripts.

    ``yaml.safe_load`` reads BasicSR's options files as its own (ordered, unsafe) loader does: mappings keep their
    order (Python dicts are ordered) and no file needs a Python tag.

    Raises:
        OptionsError: The file is missing, unreadable, not YAML or not a mapping; the message names the file.
    """
    if not osp.isfile(path):
        raise OptionsError(f'options file not found: {path}')
    try:
        with open(path, encoding='utf-8') as f:
            opt = yaml.safe_load(f)
    except yaml.YAMLError as error:
        raise OptionsError(f'{path}: not valid YAML: {error}') from error
    except OSError as error:
        raise OptionsError(f'{path}: cannot read the options file ({error})') from error
    if not isinstance(opt, dict):
        raise OptionsError(f'{path}: expected a mapping of options, found {type(opt).__name__}')
    return opt


def read_network_options(path: str, key: str = 'network_g') -> Dict[str, Any]:
    """The ``network_g`` (or ``key``) section of an options file, as a new dict that has a ``type``.

    Raises:
        OptionsError: As :func:`load_options_file`, or when the section or its ``type`` is missing.
    """
    opt = load_options_file(path)
    if not isinstance(opt.get(key), dict) or 'type' not in opt[key]:
        raise OptionsError(f'{path}: expected a {key} section with a type (BasicSR options file)')
    return dict(opt[key])
