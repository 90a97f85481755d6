"""despike-export: the ONNX graph of a trained DeSpike matches PyTorch under onnxruntime (≤ 1e-3 of the output range)
on random spikes; the command writes the file and refuses bad arguments with one line."""
import os.path as osp

import numpy as np
import pytest
import torch

pytest.importorskip('onnx')
ort = pytest.importorskip('onnxruntime')

from despike_basicsr.inference import export  # noqa: E402
from despike_basicsr.archs import despike_blocks  # noqa: E402
from despike_basicsr.archs.despike_arch import DeSpikeNet  # noqa: E402

SMALL = dict(type='DeSpikeNet', num_feat=8, windows=[16, 24], num_kernels=3, kernel_size=5, num_blocks=1, num_heads=2)


@pytest.mark.parametrize('bank_impl', export.EXPORT_BANK_IMPLS)
def test_shipped_weights_export_and_match_pytorch(tmp_path, bank_impl):
    out = str(tmp_path / 'despike.onnx')
    result = export.export_onnx(out, height=40, width=56, bank_impl=bank_impl)
    assert osp.isfile(out)
    assert result.spikes_shape == (1, 192, 40, 56) and result.gamma_shape == (1, 1, 40, 56)
    assert result.output_range > 0
    assert result.relative_diff <= 1e-3
    assert despike_blocks._forced_impl is None  # the export's fixed bank form is released


def test_graph_inputs_and_a_second_stream(tmp_path):
    """Another stream and a non-trivial γ than the one exported with: the graph is not a constant of its inputs."""
    torch.manual_seed(0)
    net = DeSpikeNet(**{k: v for k, v in SMALL.items() if k != 'type'}).eval()
    weights = str(tmp_path / 'small.pth')
    torch.save({'params': net.state_dict(), 'network_g': SMALL}, weights)
    out = str(tmp_path / 'small.onnx')
    export.export_onnx(out, weights=weights, height=24, width=20, check=False)
    session = export.onnx_session(out, threads=1)
    inputs = {i.name: (i.type, i.shape) for i in session.get_inputs()}
    assert inputs == {'spikes': ('tensor(uint8)', [1, 24, 24, 20]), 'gamma': ('tensor(float)', [1, 1, 24, 20])}
    spikes, gamma = export.random_inputs(net, 24, 20, seed=7, rate=0.6)
    gamma = gamma * torch.linspace(0.5, 1.5, 20)
    with torch.no_grad():
        expected = net(spikes, gamma).numpy()
    got = export.run_onnx(out, spikes.numpy(), gamma.numpy(), session)
    assert np.abs(got - expected).max() <= 1e-3 * (expected.max() - expected.min())
    other = export.run_onnx(out, spikes.numpy(), np.ones_like(gamma.numpy()), session)
    assert np.abs(other - got).max() > 1e-4  # γ reaches the output


def test_command_writes_the_graph_and_reports_parity(tmp_path, capsys):
    out = str(tmp_path / 'm.onnx')
    assert export.main(['--height', '32', '--width', '40', '--out', out]) == 0
    printed = capsys.readouterr().out
    assert 'relative' in printed and osp.isfile(out)
    assert export.main(['--height', '32', '--width', '40', '--out', out]) == 2  # exists
    assert 'exists' in capsys.readouterr().err
    assert export.main(['--out', str(tmp_path / 'm.txt')]) == 2
    assert export.main(['--out', str(tmp_path / 'x.onnx'), '--weights', str(tmp_path / 'missing.pth')]) == 2
    assert 'not found' in capsys.readouterr().err


def test_smoothed_bases_export_and_match_pytorch(tmp_path):
    """The smoothed bases of the window mix (reflect padding, separable Gaussian) survive the export."""
    options = dict(SMALL, base_windows=[8, 24], delta_gate=True, base_smoothing=[1.5, 4.0])
    torch.manual_seed(3)
    net = DeSpikeNet(**{k: v for k, v in options.items() if k != 'type'}).eval()
    with torch.no_grad():  # heads that use the smoothed bases
        for level in net.levels:
            level.head[0].bias.normal_(0.0, 2.0)
    weights = str(tmp_path / 'smoothed.pth')
    torch.save({'params': net.state_dict(), 'network_g': options}, weights)
    out = str(tmp_path / 'smoothed.onnx')
    export.export_onnx(out, weights=weights, height=24, width=32, check=False)
    spikes, gamma = export.random_inputs(net, 24, 32, seed=5, rate=0.2)
    with torch.no_grad():
        expected = net(spikes, gamma).numpy()
    got = export.run_onnx(out, spikes.numpy(), gamma.numpy())
    assert np.abs(got - expected).max() <= 1e-3 * (expected.max() - expected.min())
