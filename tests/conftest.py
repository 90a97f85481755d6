"""Shared pytest fixtures: the repository root, a Python for subprocesses, and a free TCP port.

Registers the plugin with BasicSR (:func:`despike_basicsr.register`) before any test module imports basicsr, so test
modules import basicsr and build registered classes directly.
"""
import os
import socket
import sys
from os import path as osp

import pytest

import despike_basicsr

despike_basicsr.register()  # compat patches before any test module imports basicsr; fills the registries

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


@pytest.fixture(scope='session')
def repo_root() -> str:
    return REPO_ROOT


@pytest.fixture()
def subprocess_env(tmp_path) -> dict:
    """Environment for child processes: experiments go under tmp_path, one thread each (the CI box has 2 cores)."""
    env = dict(os.environ)
    env.update(DESPIKE_ROOT=str(tmp_path), OMP_NUM_THREADS='1', MKL_NUM_THREADS='1', PYTHONUNBUFFERED='1')
    env['PYTHONPATH'] = REPO_ROOT + os.pathsep + env.get('PYTHONPATH', '')
    return env


@pytest.fixture(scope='session')
def python_exe() -> str:
    return sys.executable


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]
