"""A widened DeSpikeNet starts as the narrow one and its copies grow apart in training (training/widen.py)."""
import os.path as osp

import pytest
import torch

from despike_basicsr.archs.despike_arch import DeSpikeNet
from despike_basicsr.training.widen import WideningError, copy_shares, widen_checkpoint, widen_network

# the shipped network's structure (correction of plain windows, motion and noise evidence, gate) at a small width
SHIPPED_LIKE = dict(num_feat=8, windows=[8, 16, 32], base_windows=[8, 16, 32], motion_segments=3, noise_evidence=True,
                    delta_gate=True, num_kernels=3, kernel_size=5, sigma_range=(0.0, 2.0), num_scales=2, num_blocks=1,
                    num_heads=2, unshuffle=2)


def trained_like(net: DeSpikeNet, seed: int = 0) -> DeSpikeNet:
    """Random values in every parameter, the zero-initialised heads included (an untrained net hides mistakes)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in net.parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=generator))
    return net


def assert_same_function(got: torch.Tensor, expected: torch.Tensor) -> None:
    """Equal up to float32 rounding (summation order differs between the widths), relative to the output's size."""
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5 * expected.abs().max().item())


def spikes(seed: int = 1, steps: int = 32, size: int = 16) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(2, steps, size, size, generator=generator) < 0.4).float()


@pytest.mark.parametrize('factor,fusion', [(2, 'physical'), (3, 'physical'), (2, 'plain_qkv')])
def test_widened_network_computes_the_narrow_function_in_inference_and_training_layouts(factor, fusion):
    options = dict(SHIPPED_LIKE, fusion_attention=fusion)
    narrow = trained_like(DeSpikeNet(**options)).eval()
    wide = DeSpikeNet(**dict(options, num_feat=8 * factor)).eval()
    widen_network(narrow, wide, factor, probe=spikes(3))
    stream = spikes()
    with torch.no_grad():  # the inference path (per-pixel attention in the candidates' layout)
        assert_same_function(wide(stream), narrow(stream))
    # the training path (reference attention layout, gradients recorded)
    assert_same_function(wide(stream), narrow(stream))
    assert sum(p.numel() for p in wide.parameters()) > 2 * sum(p.numel() for p in narrow.parameters())


def copies_differ(wide: DeSpikeNet) -> float:
    """Largest difference between the two copies (rows 2c and 2c + 1) of any feature channel's input weights."""
    weight = wide.lift[1].weight  # (2C, 4, 3, 3): both copies read the same rates
    return (weight[0::2] - weight[1::2]).abs().max().item()


@pytest.mark.parametrize('spread', [0.0, 0.4])
def test_copies_grow_apart_only_with_unequal_shares(spread):
    narrow = trained_like(DeSpikeNet(**SHIPPED_LIKE))
    wide = DeSpikeNet(**dict(SHIPPED_LIKE, num_feat=16))
    widen_network(narrow, wide, 2, spread=spread, probe=spikes(3))
    assert copies_differ(wide) == 0.0
    optimiser = torch.optim.SGD(wide.parameters(), lr=0.1)
    for seed in range(3):
        optimiser.zero_grad()
        wide(spikes(seed)).pow(2).mean().backward()
        optimiser.step()
    if spread:
        assert copies_differ(wide) > 1e-6
    else:  # equal shares: the copies get equal gradients and stay one channel
        assert copies_differ(wide) < 1e-6


def test_shares_sum_to_one_per_channel_and_depend_on_the_seed():
    shares = copy_shares(5, 3, torch.Generator().manual_seed(0))
    torch.testing.assert_close(shares.view(5, 3).sum(1), torch.ones(5))
    assert shares.min() > 0
    again = copy_shares(5, 3, torch.Generator().manual_seed(0))
    other = copy_shares(5, 3, torch.Generator().manual_seed(1))
    assert torch.equal(shares, again) and not torch.equal(shares, other)


def test_networks_differing_in_more_than_width_are_refused():
    narrow = DeSpikeNet(**SHIPPED_LIKE)
    with pytest.raises(WideningError, match='more than width'):
        widen_network(narrow, DeSpikeNet(**dict(SHIPPED_LIKE, num_feat=16, num_blocks=2)), 2)
    with pytest.raises(WideningError, match='dimension 0 is 8 .* 24'):
        widen_network(narrow, DeSpikeNet(**dict(SHIPPED_LIKE, num_feat=24)), 2)


def test_an_architecture_widening_does_not_cover_is_caught_by_the_probe():
    # the "w/o physical kernels" ablation's depthwise bank lays its outputs out channel by kernel, which copying
    # channel n // k does not follow: the check on the probe stream must say so
    options = dict(SHIPPED_LIKE, physical_kernels=False)
    narrow = trained_like(DeSpikeNet(**options))
    with pytest.raises(WideningError, match='differs from the narrow one'):
        widen_network(narrow, DeSpikeNet(**dict(options, num_feat=16)), 2, probe=spikes(3))


def test_widened_checkpoint_loads_with_its_stored_network_and_is_never_overwritten(tmp_path):
    narrow = trained_like(DeSpikeNet(**SHIPPED_LIKE)).eval()
    weights, out = str(tmp_path / 'narrow.pth'), str(tmp_path / 'wide.pth')
    torch.save({'params': narrow.state_dict(), 'network_g': dict(SHIPPED_LIKE, type='DeSpikeNet')}, weights)
    wide_opt = widen_checkpoint(weights, out, factor=2)
    assert wide_opt['num_feat'] == 16
    checkpoint = torch.load(out, map_location='cpu', weights_only=False)
    wide = DeSpikeNet(**{k: v for k, v in checkpoint['network_g'].items() if k != 'type'}).eval()
    wide.load_state_dict(checkpoint['params_ema'])
    with torch.no_grad():
        assert_same_function(wide(spikes()), narrow(spikes()))
    before = osp.getmtime(out)
    with pytest.raises(FileExistsError, match='never overwrites'):
        widen_checkpoint(weights, out)
    assert osp.getmtime(out) == before
    torch.save({'params': narrow.state_dict()}, weights)
    with pytest.raises(WideningError, match='no network_g'):
        widen_checkpoint(weights, str(tmp_path / 'other.pth'))


def test_gpu_burst_widens_its_start_once_and_overrides_the_width(tmp_path):
    from despike_basicsr.training import gpu_burst
    narrow = trained_like(DeSpikeNet(**SHIPPED_LIKE))
    weights = str(tmp_path / 'narrow.pth')
    torch.save({'params_ema': narrow.state_dict(), 'network_g': dict(SHIPPED_LIKE, type='DeSpikeNet')}, weights)
    path, key, overrides = gpu_burst.widened_start(weights, 'params_ema', 2, str(tmp_path))
    assert key == 'params_ema' and overrides == ['network_g:num_feat=16']
    assert torch.load(path, weights_only=True)['meta']['param_key'] == 'params_ema'
    before = osp.getmtime(path)
    assert gpu_burst.widened_start(weights, 'params_ema', 2, str(tmp_path))[0] == path
    assert osp.getmtime(path) == before  # reused, never rewritten
