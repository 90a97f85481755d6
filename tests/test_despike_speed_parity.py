"""DeSpikeNet's fast inference path computes what the reference (training) path computes.

Without gradients on the CPU the network runs its features in channels-last memory, the fused channel LayerNorm, the
kernel bank in the layout its implementation produces (:func:`subpixel_convolve_bank`) with the attention reading it
there (:func:`subpixel_candidate_attention`), and kernel weights cached between calls. These tests hold every piece,
and the whole network with the shipped weights, to the reference within float tolerance.
"""
import os.path as osp

import pytest
import torch

from despike_basicsr.archs import despike_blocks as db
from despike_basicsr.archs.despike_arch import DeSpikeNet
from despike_basicsr.archs.despike_blocks import (BANK_IMPLS, LayerNorm2d, PhysicalKernelBank, candidate_attention,
                                                  fft_convolve_bank, subpixel_candidate_attention)

WEIGHTS = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), 'despike_basicsr', 'weights',
                   'despike_general.pth')


@pytest.fixture(autouse=True)
def fresh_plans():
    db.set_bank_implementation(None)
    db.clear_bank_plans()
    yield
    db.set_bank_implementation(None)
    db.clear_bank_plans()


def _spikes(length: int, height: int, width: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    rate = torch.rand(1, 1, height, width, generator=generator) * 0.6 + 0.05
    return (torch.rand(1, length, height, width, generator=generator) < rate).to(torch.uint8)


def _assert_within_range(fast: torch.Tensor, reference: torch.Tensor, fraction: float = 1e-4) -> None:
    span = float(reference.max() - reference.min())
    diff = float((fast - reference).abs().max())
    assert diff <= fraction * span, f'max abs diff {diff:.3g} > {fraction} of the output range {span:.3g}'


def test_channels_last_layer_norm_equals_the_formula():
    torch.manual_seed(0)
    norm = LayerNorm2d(6)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    x = torch.randn(2, 6, 7, 5) * 3 + 1
    reference = norm(x)
    fast = norm(x.contiguous(memory_format=torch.channels_last))
    assert fast.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(fast, reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('name', BANK_IMPLS)
@pytest.mark.parametrize('shape', [(1, 4, 13, 10), (2, 2, 9, 7)])
def test_every_implementation_in_its_own_layout_is_the_same_convolution(name, shape):
    generator = torch.Generator().manual_seed(1)
    feat = torch.randn(*shape, generator=generator)
    kernels = torch.rand(3, 5, 5, generator=generator)
    b, c, h, w = shape
    out = db._run_bank(name, feat, kernels, 'subpixel')  # (B, C, m, s, s, R, Q)
    s, rows, cols = out.shape[3], out.shape[5], out.shape[6]
    image = out.permute(0, 1, 2, 5, 3, 6, 4).reshape(b, c, 3, rows * s, cols * s)[..., :h, :w]
    reference = fft_convolve_bank(feat, kernels).transpose(1, 2)  # (B, C, m, H, W)
    torch.testing.assert_close(image, reference, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('name', ['unshuffle2', 'unshuffle4', 'grouped_cl', 'fft'])
@pytest.mark.parametrize('num_heads', [1, 2])
def test_subpixel_attention_equals_the_reference_attention(name, num_heads):
    generator = torch.Generator().manual_seed(2)
    b, c, h, w, m = 2, 8, 11, 13, 4  # odd sizes: the space-to-depth grids compute extra rows and columns
    kv = torch.randn(b, 2 * c, h, w, generator=generator).contiguous(memory_format=torch.channels_last)
    query = torch.randn(b, c, h, w, generator=generator)
    kernels = torch.rand(m, 5, 5, generator=generator)
    candidates = fft_convolve_bank(kv, kernels)  # (B, m, 2C, H, W)
    reference = candidate_attention(query, candidates[:, :, :c], candidates[:, :, c:], num_heads)
    fast = subpixel_candidate_attention(query, db._run_bank(name, kv, kernels, 'subpixel'), num_heads)
    torch.testing.assert_close(fast, reference, rtol=1e-4, atol=1e-5)


def test_cached_kernel_weights_follow_in_place_updates():
    torch.manual_seed(3)
    bank = PhysicalKernelBank(num_kernels=3, kernel_size=5)
    feat = torch.randn(1, 2, 12, 10)
    for name in ('unshuffle2', 'grouped', 'direct'):
        db.set_bank_implementation(name)
        with torch.no_grad():
            first = db.subpixel_convolve_bank(feat, bank.weight[:, 0]).clone()
            bank.weight.mul_(2.0)  # an optimiser step or load_state_dict: the version counter moves
            second = db.subpixel_convolve_bank(feat, bank.weight[:, 0])
            bank.weight.div_(2.0)
        torch.testing.assert_close(second, 2 * first, rtol=1e-5, atol=1e-6)


def test_nothing_is_cached_with_gradients():
    kernels = torch.rand(2, 3, 3, requires_grad=True)
    db._WEIGHT_CACHE.clear()
    db._spatial_kernels(kernels, torch.float32).sum().backward()
    assert not db._WEIGHT_CACHE and kernels.grad is not None


def _reference_and_fast(net: DeSpikeNet, spikes: torch.Tensor) -> tuple:
    net.eval()
    with torch.enable_grad():
        reference = net(spikes)  # gradients recorded: contiguous layout, FFT bank, reference attention
    assert reference.requires_grad
    with torch.inference_mode():
        fast = net(spikes)
    return fast, reference.detach()


@pytest.mark.skipif(not osp.isfile(WEIGHTS), reason='shipped weights not installed')
def test_shipped_weights_load_strictly_and_the_fast_path_matches():
    checkpoint = torch.load(WEIGHTS, map_location='cpu', weights_only=True)
    options = {k: v for k, v in checkpoint['network_g'].items() if k != 'type'}
    net = DeSpikeNet(**options)
    net.load_state_dict(checkpoint['params'], strict=True)  # keys and shapes unchanged
    fast, reference = _reference_and_fast(net, _spikes(192, 44, 60, seed=4))
    _assert_within_range(fast, reference)


@pytest.mark.parametrize('name', [None, 'unshuffle2', 'grouped_cl', 'direct'])
def test_paper_setting_fast_path_matches_with_trained_like_weights(name, monkeypatch):
    monkeypatch.setattr(db, 'MIN_MEASURED_ELEMENTS', 0)  # measure the toy shapes too (name None)
    torch.manual_seed(5)
    net = DeSpikeNet(num_feat=32, num_kernels=8, kernel_size=11, num_blocks=2, num_heads=2)
    with torch.no_grad():  # move every weight off its initialisation (kernels no longer exact Gaussians)
        for parameter in net.parameters():
            parameter.add_(0.02 * torch.randn_like(parameter))
    db.set_bank_implementation(name)
    fast, reference = _reference_and_fast(net, _spikes(192, 36, 52, seed=6))
    _assert_within_range(fast, reference)
