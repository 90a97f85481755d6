"""scripts/run_demo_protocol.sh: its arguments are read before anything runs (install, data, training), so --help and
a mistyped option cost nothing."""
import os
import shutil
import subprocess

import pytest


@pytest.fixture
def script_copy(repo_root, tmp_path):
    """The script alone in an empty tree: anything past argument parsing would fail there (no install.sh)."""
    (tmp_path / 'scripts').mkdir()
    shutil.copy(os.path.join(repo_root, 'scripts', 'run_demo_protocol.sh'), tmp_path / 'scripts')
    return str(tmp_path / 'scripts' / 'run_demo_protocol.sh')


def _run(script, *args):
    return subprocess.run(['bash', script, *args], capture_output=True, text=True, timeout=60)


def test_help_prints_the_usage_and_runs_nothing(script_copy):
    run = _run(script_copy, '--help')
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith('The CPU benchmark protocol')
    assert 'Usage: bash scripts/run_demo_protocol.sh' in run.stdout
    assert '--device' in run.stdout and 'set -euo' not in run.stdout and not run.stdout.lstrip().startswith('#')
    assert _run(script_copy, '-h').stdout == run.stdout


@pytest.mark.parametrize('args, message', [(['--bogus'], 'unknown argument --bogus'),
                                           (['--device'], '--device needs a value')])
def test_a_wrong_argument_stops_before_anything_runs(script_copy, args, message):
    run = _run(script_copy, *args)
    assert run.returncode == 2 and message in run.stderr and not run.stdout
