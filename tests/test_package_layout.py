"""The package's shape: a light top level and physics path, one documented call that registers with BasicSR."""
import subprocess
import sys
import textwrap

import pytest

HEAVY = ('torch', 'torchvision', 'basicsr')

PHYSICS_PROBE = textwrap.dedent('''
    import contextlib, io, sys
    import despike_basicsr
    from despike_basicsr.spike import cli
    for main in (cli.simulate_main, cli.reconstruct_main, cli.calibrate_fpn_main):
        with contextlib.redirect_stdout(io.StringIO()) as out:
            try:
                main(['--help'])
            except SystemExit as stop:
                assert stop.code == 0, stop.code
        assert 'usage:' in out.getvalue()
    print(' '.join(sorted(name for name in {heavy!r} if name in sys.modules)))
''')


def _run(code: str, env: dict) -> str:
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip()


def test_physics_commands_answer_help_without_torch_or_basicsr(subprocess_env):
    loaded = _run(PHYSICS_PROBE.format(heavy=HEAVY), subprocess_env)
    assert loaded == '', f'the physics path imported {loaded}'


def test_importing_the_package_and_compat_changes_nothing_in_basicsr(subprocess_env):
    code = textwrap.dedent('''
        import sys
        import despike_basicsr, despike_basicsr.compat
        print('basicsr' in sys.modules, despike_basicsr.compat._APPLIED)
    ''')
    assert _run(code, subprocess_env) == 'False False'


def test_register_lets_basicsr_build_every_network(subprocess_env):
    """After the one documented call, BasicSR's own builder finds DeSpikeNet, GKMNet and NRKNet (fresh interpreter)."""
    code = textwrap.dedent('''
        import despike_basicsr
        despike_basicsr.register()
        despike_basicsr.register()  # idempotent
        from basicsr.archs import build_network
        from basicsr.models import build_model  # noqa: F401
        from basicsr.utils.registry import DATASET_REGISTRY, LOSS_REGISTRY, METRIC_REGISTRY, MODEL_REGISTRY
        nets = [build_network(dict(type='DeSpikeNet', num_feat=8, windows=[16], num_scales=1, num_blocks=1)),
                build_network(dict(type='GKMNet', in_channels=1, width=4, num_blocks=1)),
                build_network(dict(type='NRKNet', in_channels=1, widths=[8, 8, 8], num_blocks=[1, 1, 1]))]
        print(' '.join(type(net).__name__ for net in nets))
        assert 'DeSpikeModel' in MODEL_REGISTRY and 'CascadeModel' in MODEL_REGISTRY
        assert 'SpikeLMDBDataset' in DATASET_REGISTRY and 'HierarchicalMSELoss' in LOSS_REGISTRY
        assert 'calculate_lpips' in METRIC_REGISTRY
    ''')
    assert _run(code, subprocess_env) == 'DeSpikeNet GKMNet NRKNet'


@pytest.mark.parametrize('subpackage', ['archs', 'data', 'losses', 'metrics', 'models'])
def test_each_registered_subpackage_applies_compat_itself(subprocess_env, subpackage):
    """Importing a registered subpackage directly (without register()) still adapts basicsr before loading it."""
    code = f'import despike_basicsr.{subpackage}, despike_basicsr.compat as c; print(c._APPLIED)'
    assert _run(code, subprocess_env) == 'True'
