"""Every options file parses and names registered types; methods on one data set share its datasets/val sections.

A method table is only fair if every method sees the same data, crops and metrics: the ``datasets`` and ``val``
sections of each ``train_*_<data>.yml`` (baselines, ablations) must equal those of ``train_despike_<data>.yml``, and
likewise for the ``test_*`` files.
"""
import glob
import re
from os import path as osp

import pytest
import yaml
from basicsr.archs import build_network
from basicsr.utils.options import ordered_yaml
from basicsr.utils.registry import ARCH_REGISTRY, DATASET_REGISTRY, LOSS_REGISTRY, METRIC_REGISTRY, MODEL_REGISTRY

from conftest import REPO_ROOT
from despike_basicsr.options_file import OptionsError, load_options_file, read_network_options
from despike_basicsr.training.options import check_options, check_options_file

OPTIONS_DIR = osp.join(REPO_ROOT, 'options')
ALL_FILES = sorted(glob.glob(osp.join(OPTIONS_DIR, '*.yml')) + glob.glob(osp.join(OPTIONS_DIR, '*', '*.yml')))
DATA_SETS = ('dpdd', 'demo')
SHARED_SECTIONS = ('datasets', 'val')


def _load(path: str) -> dict:
    """Parse as BasicSR does (its ordered YAML loader)."""
    with open(path, encoding='utf-8') as f:
        return yaml.load(f, Loader=ordered_yaml()[0])


def _data_set(path: str) -> str:
    """The data-set token of a file name (``train_nrknet_tfp_dpdd.yml`` -> ``dpdd``), or '' when none."""
    tokens = re.split(r'[_.]', osp.basename(path))
    found = [name for name in DATA_SETS if name in tokens]
    return found[0] if found else ''


def _shared_pairs(kind: str):
    """(file, reference) pairs: each ``{kind}_*_<data>.yml`` with ``{kind}_despike_<data>.yml``."""
    pairs = []
    for path in ALL_FILES:
        data = _data_set(path)
        reference = osp.join(OPTIONS_DIR, f'{kind}_despike_{data}.yml')
        if osp.basename(path).startswith(f'{kind}_') and data and osp.exists(reference) and path != reference:
            pairs.append((path, reference))
    return pairs


def _rel(path: str) -> str:
    return osp.relpath(path, REPO_ROOT)


def test_the_option_files_exist():
    names = {osp.basename(p) for p in ALL_FILES}
    for arch in ('gkmnet', 'nrknet'):
        for front in ('tfp', 'tfi'):
            assert {f'train_{arch}_{front}_dpdd.yml', f'test_{arch}_{front}_dpdd.yml'} <= names
        assert {f'train_{arch}_tfp_demo.yml', f'test_{arch}_tfp_demo.yml'} <= names
    assert len(_shared_pairs('train')) >= 8  # the six cascade train files at least, with both references present


def _mismatches(pairs) -> list:
    """One line per (file, section) whose parsed content differs from the reference file's."""
    found = []
    for path, reference in pairs:
        opt, ref = _load(path), _load(reference)
        for section in SHARED_SECTIONS:
            if opt.get(section) != ref.get(section):
                found.append(f'{_rel(path)}: section {section!r} differs from {_rel(reference)}')
    return found


@pytest.mark.parametrize('kind', ['train', 'test'])
def test_methods_of_one_data_set_share_datasets_and_val(kind):
    pairs = _shared_pairs(kind)
    if not pairs:
        pytest.skip(f'no {kind}_despike_<data>.yml reference in options/ yet')
    assert _mismatches(pairs) == []


def test_the_shared_sections_check_can_fail(tmp_path):
    reference = osp.join(OPTIONS_DIR, 'train_despike_demo.yml')
    text = open(reference, encoding='utf-8').read()
    changed = tmp_path / 'train_x_demo.yml'
    changed.write_text(text.replace('gt_size: 64', 'gt_size: 32'))
    assert _mismatches([(str(changed), reference)]) == [f'{_rel(str(changed))}: section \'datasets\' differs from '
                                                        f'{_rel(reference)}']


def _registered_types(opt: dict):
    """Yield (where, registry, type name) for every type an options dict names."""
    yield 'model_type', MODEL_REGISTRY, opt.get('model_type', 'SRModel')
    for phase, dataset in (opt.get('datasets') or {}).items():
        yield f'datasets.{phase}.type', DATASET_REGISTRY, dataset.get('type')
    for key in ('network_g', 'network_d'):
        if opt.get(key):
            yield f'{key}.type', ARCH_REGISTRY, opt[key].get('type')
    for key, loss in (opt.get('train') or {}).items():
        if key.endswith('_opt') and isinstance(loss, dict) and 'type' in loss:
            yield f'train.{key}.type', LOSS_REGISTRY, loss['type']
    for name, metric in ((opt.get('val') or {}).get('metrics') or {}).items():
        yield f'val.metrics.{name}.type', METRIC_REGISTRY, metric.get('type')


GRID_LOSS_FILES = [p for p in ALL_FILES if _load(p).get('model_type') == 'DeSpikeModel'
                   and ((_load(p).get('train') or {}).get('pixel_opt') or {}).get('type') == 'HierarchicalMSELoss']


@pytest.mark.parametrize('path', GRID_LOSS_FILES, ids=_rel)
def test_grid_loss_weights_fit_the_network_grid(path):
    import torch
    from basicsr.losses import build_loss
    opt = _load(path)
    net = build_network(dict(opt['network_g'])).eval()
    with torch.no_grad():
        _, grid = net(torch.zeros(1, net.frames_needed, 16, 16), return_intermediates=True)
    loss = build_loss(dict(opt['train']['pixel_opt']))
    assert tuple(loss.weights_for(len(grid), len(grid[-1])).shape) == (len(grid), len(grid[-1]))


@pytest.mark.parametrize('path', ALL_FILES, ids=_rel)
def test_options_file_parses_and_names_registered_types(path):
    opt = _load(path)
    assert isinstance(opt, dict) and opt.get('name'), f'{_rel(path)} has no name'
    unknown = [f'{where}: {name!r}' for where, registry, name in _registered_types(opt) if name not in registry]
    assert unknown == [], f'{_rel(path)} names unregistered types'
    # The network section must also build with its arguments (catches misspelt options), and the entries' own
    # options check (run by train.py / test.py before BasicSR starts) must accept the file.
    build_network(dict(opt['network_g']))
    check_options_file(path)


def test_baseline_files_use_single_channel_and_their_own_losses():
    for path in glob.glob(osp.join(OPTIONS_DIR, '*_gkmnet_*.yml')) + glob.glob(osp.join(OPTIONS_DIR, '*_nrknet_*.yml')):
        opt = _load(path)
        assert opt['model_type'] == 'CascadeModel'
        assert opt['network_g']['in_channels'] == 1, _rel(path)
        front = 'tfi' if '_tfi_' in path else 'tfp'
        assert opt['front_end']['type'] == front, _rel(path)
        if osp.basename(path).startswith('train_'):
            assert opt['train']['pixel_opt']['type'] == 'MultiScaleMSELoss'
            has_fft = 'fft_opt' in opt['train']
            assert has_fft == ('nrknet' in path), f'{_rel(path)}: FFT loss belongs to NRKNet only'


@pytest.mark.parametrize('path', ALL_FILES, ids=[osp.relpath(p, OPTIONS_DIR) for p in ALL_FILES])
def test_the_one_options_reader_reads_what_basicsr_reads(path):
    assert load_options_file(path) == _load(path)


def test_network_options_reader_names_the_file_and_the_problem(tmp_path):
    (tmp_path / 'list.yml').write_text('- 1\n- 2\n')
    (tmp_path / 'no_net.yml').write_text('name: x\n')
    (tmp_path / 'ok.yml').write_text('network_g: {type: GKMNet, width: 4}\n')
    with pytest.raises(OptionsError, match=r'options file not found: .*missing\.yml'):
        read_network_options(str(tmp_path / 'missing.yml'))
    with pytest.raises(OptionsError, match=r'list\.yml: expected a mapping of options, found list'):
        read_network_options(str(tmp_path / 'list.yml'))
    with pytest.raises(OptionsError, match=r'no_net\.yml: expected a network_g section with a type'):
        read_network_options(str(tmp_path / 'no_net.yml'))
    assert read_network_options(str(tmp_path / 'ok.yml')) == {'type': 'GKMNet', 'width': 4}


@pytest.mark.parametrize('key', ['use_fpn', 'network_ema', 'cudnn_deterministic'])
def test_keys_nothing_reads_are_rejected(key):
    opt = load_options_file(osp.join(OPTIONS_DIR, 'train_despike_demo.yml'))
    opt[key] = True
    with pytest.raises(OptionsError, match=f"unknown top-level key '{key}'"):
        check_options(opt, 'demo.yml')


PROTOCOL_DIR = osp.join(OPTIONS_DIR, 'dpdd_cpu')
PROTOCOL_BUDGET = ('ema_decay', 'optim_g', 'scheduler', 'total_iter', 'warmup_iter', 'grad_clip_norm')


def _protocol_differences(path: str, reference: str) -> list:
    """Where a DPDD-protocol file departs from DeSpike's in data, metrics, seed or training budget."""
    opt, ref = _load(path), _load(reference)
    found = [section for section in SHARED_SECTIONS + ('manual_seed', ) if opt.get(section) != ref.get(section)]
    found += [f'train.{key}' for key in PROTOCOL_BUDGET if opt['train'].get(key) != ref['train'].get(key)]
    return found


ABLATION_SWITCHES = {'multi_temporal': {'multi_temporal': False}, 'multi_scale': {'multi_spatial': False},
                     'fpn': {'fpn_compensation': False}, 'fusion': {'fusion_attention': 'plain_qkv'},
                     'physical_kernels': {'physical_kernels': False}}
FRONT_END_STAGES = ('rsir', 'spk2imgnet')


def test_the_dpdd_protocol_trains_every_method_on_one_budget():
    reference = osp.join(PROTOCOL_DIR, 'train_despike.yml')
    files = sorted(glob.glob(osp.join(PROTOCOL_DIR, 'train_*.yml')))
    ablations = {f'train_despike_wo_{name}.yml' for name in ABLATION_SWITCHES}
    despike = {'train_despike.yml', 'train_despike_small.yml'} | ablations
    stages = {f'train_{stage}.yml' for stage in FRONT_END_STAGES}
    learned = {f'train_{stage}_{net}.yml' for stage in FRONT_END_STAGES for net in ('gkmnet', 'nrknet')}
    cascades = {osp.basename(p) for p in files} - despike - stages
    published = {f'train_{net}_{front}.yml' for net in ('gkmnet', 'nrknet') for front in ('tfp', 'tfi')}
    assert cascades == published | learned | {'train_nrknet_tfp_fpn.yml'}
    assert despike | stages <= {osp.basename(p) for p in files}
    for path in files:
        assert _protocol_differences(path, reference) == [], _rel(path)
        opt, base = _load(path), osp.basename(path)
        if base in despike:
            assert opt['model_type'] == 'DeSpikeModel'
        elif base in stages:
            assert opt['model_type'] == 'SpikeFrontEndModel' and opt['network_g']['type'].lower() + '.yml' in base
        elif base in learned:
            # the frozen front end is exactly its trained stage: same network, its weights, its FPN input
            stage = _load(osp.join(PROTOCOL_DIR, f"train_{base.split('_')[1]}.yml"))
            front = opt['front_end']
            assert opt['model_type'] == 'CascadeModel' and front['type'] == 'learned'
            assert dict(front['network']) == dict(stage['network_g'])
            assert front['weights'] == f"experiments/{stage['name']}/models/net_g_latest.pth"
            assert front['fpn'] == (stage.get('front_end') or {}).get('fpn', False)
            assert opt['network_g']['in_channels'] == 1 and opt['network_g']['type'].lower() in base
        else:
            assert opt['model_type'] == 'CascadeModel' and opt['network_g']['in_channels'] == 1
            assert opt['front_end']['type'] in base
            # the published cascades have no FPN compensation; the _fpn variant differs from its twin only there
            assert opt['front_end'].get('fpn', False) == base.endswith('_fpn.yml')
            if base.endswith('_fpn.yml'):
                twin = _load(path.replace('_fpn.yml', '.yml'))
                twin['front_end']['fpn'], twin['name'] = True, opt['name']
                assert opt == twin, _rel(path)
    # each ablation is train_despike.yml with one network switch changed (and, with one temporal or spatial scale
    # left, the grid loss weighting it as the full loss weights the longest window or the finest scale)
    full = _load(reference)
    for name, switch in ABLATION_SWITCHES.items():
        opt = _load(osp.join(PROTOCOL_DIR, f'train_despike_wo_{name}.yml'))
        assert opt['network_g'] == dict(full['network_g'], **switch), name
        weights = {'multi_temporal': 'temporal_weights', 'multi_scale': 'scale_weights'}.get(name)
        if weights is not None:
            assert opt['train']['pixel_opt'][weights] == full['train']['pixel_opt'][weights][-1:], name
            opt['train']['pixel_opt'][weights] = full['train']['pixel_opt'][weights]
        assert {k: v for k, v in opt.items() if k not in ('name', 'network_g')} == \
            {k: v for k, v in full.items() if k not in ('name', 'network_g')}
    names = [_load(p)['name'] for p in files]
    assert len(set(names)) == len(names), 'each method needs its own experiment folder'


LOW_DIR = osp.join(OPTIONS_DIR, 'dpdd_low')


def _as_low_light(text: str, name: str) -> dict:
    """A dpdd_cpu file as its low-light twin must read: other LMDBs and experiments (RSIR: dim-light sub-windows)."""
    text = text.replace('datasets/dpdd_cpu/', 'datasets/dpdd_cpu_low/').replace('name: DPDDcpu_', 'name: DPDDlow_')
    text = text.replace('experiments/DPDDcpu_', 'experiments/DPDDlow_')
    if name.startswith('train_rsir'):
        text = text.replace('sub_window: 16', 'sub_window: 32')
    return yaml.load(text, Loader=ordered_yaml()[0])


def test_the_low_light_level_trains_despike_and_all_eight_cascades_as_the_bright_one():
    files = sorted(glob.glob(osp.join(LOW_DIR, 'train_*.yml')))
    cascades = {f'train_{n}_{f}.yml' for n in ('gkmnet', 'nrknet') for f in ('tfp', 'tfi')}
    cascades |= {f'train_{s}_{n}.yml' for s in FRONT_END_STAGES for n in ('gkmnet', 'nrknet')}
    expected = {'train_despike.yml'} | {f'train_{s}.yml' for s in FRONT_END_STAGES} | cascades
    assert {osp.basename(p) for p in files} == expected
    for path in files:
        name = osp.basename(path)
        twin = open(osp.join(PROTOCOL_DIR, name), encoding='utf-8').read()
        assert _load(path) == _as_low_light(twin, name), _rel(path)
        assert _load(path)['datasets']['train']['dataroot'] == 'datasets/dpdd_cpu_low/train.lmdb'


def test_the_protocol_budget_check_can_fail(tmp_path):
    reference = osp.join(PROTOCOL_DIR, 'train_despike.yml')
    text = open(osp.join(PROTOCOL_DIR, 'train_nrknet_tfp.yml'), encoding='utf-8').read()
    changed = tmp_path / 'train_nrknet_tfp.yml'
    changed.write_text(text.replace('total_iter: 1200', 'total_iter: 2400').replace('manual_seed: 2026',
                                                                                    'manual_seed: 1'))
    assert _protocol_differences(str(changed), reference) == ['manual_seed', 'train.total_iter']


def test_despike_streams_need_only_be_as_long_as_despikenet_reads():
    """DeSpikeNet clips its windows to the stream down to min(8, smallest window) steps; the check asks no more."""
    opt = load_options_file(osp.join(OPTIONS_DIR, 'train_despike_demo.yml'))
    train = opt['datasets']['train']
    train['temporal_len'] = [8, 32]  # shorter than every window [64, 128, 192]: read with the windows clipped
    opt['datasets']['val']['val_len'] = 16
    check_options(opt, 'demo.yml')
    train['temporal_len'] = [7, 32]
    with pytest.raises(OptionsError) as err:
        check_options(opt, 'demo.yml')
    assert str(err.value) == ('demo.yml: datasets.train.temporal_len: streams of 7 steps are shorter than DeSpikeNet '
                              'reads: at least 8 steps, min(8, the smallest of network_g.windows = [64, 128, 192]); '
                              'lengthen the streams')
    train['temporal_len'] = [8, 32]
    opt['network_g']['windows'] = [4, 64]  # a window shorter than 8 steps lowers the floor to it
    opt['datasets']['val']['val_len'] = 3
    with pytest.raises(OptionsError, match=r'^demo\.yml: datasets\.val\.val_len: streams of 3 steps are shorter than '
                       r'DeSpikeNet reads: at least 4 steps'):
        check_options(opt, 'demo.yml')
    opt['network_g'] = {'type': 'GKMNet'}  # no windows: nothing to check
    check_options(opt, 'demo.yml')


def _start_weights(path: str) -> str:
    return str((_load(path).get('path') or {}).get('pretrain_network_g') or '')


COMMITTED_STARTS = [path for path in ALL_FILES if _start_weights(path).startswith(('results/', 'despike_basicsr/'))]


@pytest.mark.parametrize('path', COMMITTED_STARTS, ids=_rel)
def test_committed_start_weights_exist_and_load_into_the_files_network(path):
    """A fresh run of a file that starts from committed weights must load them (shipped weights change networks)."""
    import torch
    opt = _load(path)
    weights = osp.join(REPO_ROOT, opt['path']['pretrain_network_g'])
    assert osp.isfile(weights), f'{_rel(path)}: pretrain_network_g {weights} is missing'
    params = torch.load(weights, map_location='cpu', weights_only=True)[opt['path'].get('param_key_g', 'params')]
    net = build_network(dict(opt['network_g']))
    result = net.load_state_dict(params, strict=bool(opt['path'].get('strict_load_g', True)))
    assert not result.unexpected_keys, f'{_rel(path)}: keys the network lacks: {result.unexpected_keys[:3]}'
    for key in result.missing_keys:  # only zero-initialised new branches may be missing
        assert key.startswith(('motion_lift.', 'noise_lift.')), f'{_rel(path)}: {key} is not in {weights}'
