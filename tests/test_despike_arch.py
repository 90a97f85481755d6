"""DeSpikeNet: every options file builds a network that runs on 64/150/192/300-step streams; gradients reach every
parameter of every variant; the IF integration, the kernel bank and the fusion do what their equations say."""
import glob
import os.path as osp

import pytest
import torch
import yaml
from basicsr.archs import build_network
from torch.nn import functional as F

from despike_basicsr.archs.despike_arch import (DeSpikeNet, centred_window_bounds, integrate_windows,
                                                normalise_spike_count)
from despike_basicsr.archs.despike_blocks import (CandidateAttentionFusion, ConcatConvFusion, LayerNorm2d,
                                                  PhysicalKernelBank, PlainQKVFusion, candidate_attention,
                                                  fft_convolve_bank, gaussian_kernel_2d, smooth_fft_size)

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
SHIPPED_WEIGHTS = osp.join(ROOT, 'despike_basicsr', 'weights', 'despike_general.pth')
OPTION_FILES = sorted(
    glob.glob(osp.join(ROOT, 'options', '*despike*.yml')) + glob.glob(osp.join(ROOT, 'options', 'ablation', '*.yml')))
SMALL = dict(num_feat=8, windows=[16, 24, 32], num_kernels=3, kernel_size=5, num_blocks=1, num_heads=2)
SWITCHES = ('multi_temporal', 'multi_spatial', 'fpn_compensation', 'transformer_fusion', 'physical_kernels')


def random_spikes(batch: int, steps: int, height: int, width: int, seed: int = 0, rate: float = 0.3) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(batch, steps, height, width, generator=generator) < rate).float()


def network_options(path: str) -> dict:
    with open(path, encoding='utf-8') as f:
        return yaml.safe_load(f)['network_g']


def test_every_despike_options_file_is_found():
    names = {osp.basename(p) for p in OPTION_FILES}
    assert {'train_despike_dpdd.yml', 'test_despike_dpdd.yml', 'train_despike_demo.yml',
            'test_despike_demo.yml'} <= names
    assert {
        f'train_despike_dpdd_wo_{tag}.yml'
        for tag in ('multi_temporal', 'multi_spatial', 'fpn', 'transformer', 'physical_kernels')
    } <= names


@pytest.mark.parametrize('path', OPTION_FILES, ids=osp.basename)
def test_options_network_runs_on_streams_of_several_lengths(path):
    torch.manual_seed(0)
    net = build_network(network_options(path)).eval()
    assert isinstance(net, DeSpikeNet)
    gamma = 1 + 0.05 * torch.randn(1, 1, 13, 18, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for steps in (64, 150, 192, 300):
            out = net(random_spikes(1, steps, 13, 18, seed=steps), gamma)
            assert out.shape == (1, 1, 13, 18)
            assert torch.isfinite(out).all()


def small_variants():
    yield 'full', dict(SMALL)
    for switch in SWITCHES:
        yield f'wo_{switch}', dict(SMALL, **{switch: False})
    yield 'plain_qkv', dict(SMALL, fusion_attention='plain_qkv')


@pytest.mark.parametrize('name,kwargs', list(small_variants()), ids=lambda v: v if isinstance(v, str) else '')
def test_gradients_reach_every_parameter(name, kwargs):
    torch.manual_seed(0)
    net = DeSpikeNet(**kwargs)
    spikes = random_spikes(2, 40, 12, 15)
    gamma = 1 + 0.05 * torch.randn(2, 1, 12, 15, generator=torch.Generator().manual_seed(3))
    final, grid = net(spikes, gamma, return_intermediates=True)
    loss = sum((out - 0.5).pow(2).mean() for row in grid for out in row)
    loss.backward()
    for param_name, param in net.named_parameters():
        assert param.grad is not None, f'{name}: {param_name} got no gradient'
        assert torch.isfinite(param.grad).all(), f'{name}: {param_name} has a non-finite gradient'
        assert param.grad.abs().sum() > 0, f'{name}: {param_name} has an all-zero gradient'


@pytest.mark.slow
@pytest.mark.parametrize('path', [p for p in OPTION_FILES if 'train_' in osp.basename(p)], ids=osp.basename)
def test_gradients_reach_every_parameter_of_options_networks(path):
    torch.manual_seed(0)
    net = build_network(network_options(path))
    with torch.no_grad():  # a zero-initialised layer passes no gradient upstream until its first step: nudge it
        for param in net.parameters():
            if not param.abs().sum():
                param.normal_(0.0, 1e-3)
    final, grid = net(random_spikes(1, 64, 12, 12), return_intermediates=True)
    sum(out.mean() for row in grid for out in row).backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing, f'{osp.basename(path)}: no gradient for {missing}'


@pytest.mark.parametrize('height,width', [(61, 75), (17, 9), (8, 8), (5, 7)])
def test_odd_sizes_keep_input_size_and_grid_sizes(height, width):
    torch.manual_seed(0)
    net = DeSpikeNet(**SMALL).eval()
    with torch.no_grad():
        final, grid = net(random_spikes(1, 32, height, width), return_intermediates=True)
    assert final.shape == (1, 1, height, width)
    assert len(grid) == 3 and all(len(row) == 3 for row in grid)
    for row in grid:
        for s, out in enumerate(row):
            factor = 2**(2 - s)
            assert out.shape[-2:] == (-(-height // factor), -(-width // factor))
    assert torch.equal(grid[-1][-1], final)


def test_short_stream_is_a_clear_error():
    """Windows are clipped to the stream, down to 8 steps (or the smallest window, if shorter); below, the error
    names both lengths."""
    net = DeSpikeNet(**SMALL)
    assert net.min_stream_len == 8
    with pytest.raises(ValueError, match=r'at least 8 time steps, got 7 steps'):
        net(random_spikes(1, 7, 8, 8))
    with torch.no_grad():
        assert net.eval()(random_spikes(1, 8, 8, 8)).shape == (1, 1, 8, 8)
    tiny = DeSpikeNet(**dict(SMALL, windows=[4, 6]))
    assert tiny.min_stream_len == 4
    with pytest.raises(ValueError, match=r'at least 4 time steps, got 3 steps'):
        tiny(random_spikes(1, 3, 8, 8))


@pytest.mark.skipif(not osp.isfile(SHIPPED_WEIGHTS), reason='the shipped weights are not built')
def test_shipped_weights_read_a_32_step_stream():
    """Issue 22 short windows: every window (64..192 in the paper) clipped to a 32-step stream."""
    checkpoint = torch.load(SHIPPED_WEIGHTS, map_location='cpu', weights_only=True)
    net = DeSpikeNet(**{k: v for k, v in checkpoint['network_g'].items() if k != 'type'}).eval()
    net.load_state_dict(checkpoint['params'], strict=True)
    assert max(net.windows + net.base_windows) > 32  # the longer windows are clipped to the stream
    with torch.no_grad():
        out = net(random_spikes(1, 32, 24, 30, rate=0.2))
    assert out.shape == (1, 1, 24, 30) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match=r'at least 8 time steps, got 6 steps'):
        net(random_spikes(1, 6, 24, 30))


def test_bad_shapes_are_clear_errors():
    net = DeSpikeNet(**SMALL)
    with pytest.raises(ValueError, match=r'\(B, T, H, W\), got shape \(32, 8, 8\)'):
        net(random_spikes(1, 32, 8, 8)[0])
    with pytest.raises(ValueError, match=r'gamma must be shaped \(2 or 1, 1, 8, 8\).*got \(2, 1, 8, 9\)'):
        net(random_spikes(2, 32, 8, 8), torch.ones(2, 1, 8, 9))
    with pytest.raises(ValueError, match='windows must be a non-empty list'):
        DeSpikeNet(windows=[])
    with pytest.raises(ValueError, match='num_heads must divide'):
        DeSpikeNet(num_feat=8, num_heads=3)


def test_window_bounds_are_centred_and_clipped():
    # centre 75: a 64-frame window covers [75 − 32, 75 + 32); a 192-frame one would be [−21, 171) → [0, 150)
    assert centred_window_bounds(150, [64, 192]) == [(43, 107), (0, 150)]
    assert centred_window_bounds(64, [64, 96]) == [(0, 64), (0, 64)]
    assert centred_window_bounds(300, [64]) == [(118, 182)]


@pytest.mark.parametrize('dtype', [torch.float32, torch.uint8, torch.bool, torch.float16])
def test_integration_matches_the_if_recursion_step_by_step(dtype):
    spikes = random_spikes(2, 30, 4, 5, seed=7)
    gamma = torch.rand(2, 1, 4, 5, generator=torch.Generator().manual_seed(8)) + 0.5
    bounds = [(10, 20), (0, 30), (3, 9), (25, 28)]  # nested, overlapping and disjoint windows
    potentials = integrate_windows(spikes.to(dtype), bounds, gamma)
    assert potentials.dtype == torch.float32
    for i, (start, end) in enumerate(bounds):
        membrane = torch.zeros(2, 4, 5)
        for t in range(start, end):  # V(t) = V(t−1) + γ·S(t)
            membrane = membrane + gamma[:, 0] * spikes[:, t]
        torch.testing.assert_close(potentials[:, i], membrane)


def test_normalised_rate_of_a_constant_stream_is_its_rate():
    spikes = torch.zeros(1, 100, 3, 3)
    spikes[:, ::4] = 1  # fires every 4th step
    bounds = centred_window_bounds(100, [20, 40, 400])
    rates = normalise_spike_count(integrate_windows(spikes, bounds), bounds)
    torch.testing.assert_close(rates, torch.full((1, 3, 3, 3), 0.25))


def test_frames_outside_the_longest_window_are_ignored():
    torch.manual_seed(0)
    net = DeSpikeNet(**SMALL).eval()
    spikes = random_spikes(1, 100, 9, 9)
    changed = spikes.clone()
    start, end = net.window_bounds(100)[-1]
    assert (start, end) == (34, 66) and net.frames_needed == 32
    changed[:, :start] = 1 - changed[:, :start]
    changed[:, end:] = 1 - changed[:, end:]
    with torch.no_grad():
        torch.testing.assert_close(net(spikes), net(changed))
        assert not torch.allclose(net(spikes), net(1 - spikes))


def test_batch_items_are_independent_and_dtypes_agree():
    torch.manual_seed(0)
    net = DeSpikeNet(**SMALL).eval()
    spikes = random_spikes(3, 40, 10, 11)
    with torch.no_grad():
        batched = net(spikes)
        single = net(spikes[1:2])
        as_uint8 = net(spikes.to(torch.uint8))
    torch.testing.assert_close(batched[1:2], single, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(batched, as_uint8)


def test_fpn_gamma_matters_only_with_compensation():
    spikes = random_spikes(1, 40, 10, 10)
    gamma = torch.full((1, 1, 10, 10), 1.3)
    for compensate in (True, False):
        torch.manual_seed(0)
        net = DeSpikeNet(**SMALL, fpn_compensation=compensate).eval()
        with torch.no_grad():
            same = torch.allclose(net(spikes), net(spikes, gamma))
        assert same != compensate


def test_ablation_switches_change_the_structure():
    torch.manual_seed(0)
    spikes = random_spikes(1, 40, 8, 8)
    _, grid = DeSpikeNet(**SMALL, multi_temporal=False)(spikes, return_intermediates=True)
    assert len(grid) == 1 and len(grid[0]) == 3
    assert DeSpikeNet(**SMALL, multi_temporal=False).windows == [32]
    assert DeSpikeNet(**SMALL, multi_temporal=False, single_window=24).windows == [24]
    _, grid = DeSpikeNet(**SMALL, multi_spatial=False)(spikes, return_intermediates=True)
    assert len(grid) == 3 and all(len(row) == 1 for row in grid)
    assert isinstance(DeSpikeNet(**SMALL).bank, PhysicalKernelBank)
    assert not isinstance(DeSpikeNet(**SMALL, physical_kernels=False).bank, PhysicalKernelBank)
    assert isinstance(DeSpikeNet(**SMALL).levels[0].fusion, CandidateAttentionFusion)
    assert not isinstance(DeSpikeNet(**SMALL, transformer_fusion=False).levels[0].fusion, CandidateAttentionFusion)


def test_plain_qkv_fusion_is_scaled_dot_product_attention_over_the_candidates():
    """Issue 22: "attention replaced by plain QKV": 1x1 projections of the query and of each bank candidate, softmax
    over the candidates per pixel, residual; no LayerNorm, no feed-forward block."""
    torch.manual_seed(2)
    fusion = PlainQKVFusion(8, num_heads=2)
    assert not any(isinstance(m, LayerNorm2d) for m in fusion.modules()) and not hasattr(fusion, 'ffn')
    bank = PhysicalKernelBank(3, 5, (0.5, 2.0))
    query, feat = torch.randn(2, 8, 7, 9), torch.randn(2, 8, 7, 9)
    candidates = fft_convolve_bank(feat, bank.weight[:, 0].detach())  # (B, m, C, H, W)
    q = fusion.to_q(query).reshape(2, 1, 2, 4, 7, 9)
    kv = fusion.to_kv(candidates.reshape(6, 8, 7, 9)).reshape(2, 3, 2, 2, 4, 7, 9)  # (B, m, k|v, heads, d, H, W)
    weights = torch.softmax((q * kv[:, :, 0]).sum(3, keepdim=True) / 2.0, dim=1)  # √d = 2
    expected = query + fusion.proj((weights * kv[:, :, 1]).sum(1).reshape(2, 8, 7, 9))
    for grad in (True, False):
        with torch.set_grad_enabled(grad):
            torch.testing.assert_close(fusion(query, feat, bank), expected.detach(), rtol=1e-4, atol=1e-5)


def test_fusion_attention_option_builds_the_plain_variant_and_keeps_the_default():
    plain = DeSpikeNet(**SMALL, fusion_attention='plain_qkv')
    assert all(isinstance(level.fusion, PlainQKVFusion) for level in plain.levels)
    assert isinstance(plain.bank, PhysicalKernelBank)
    default, physical = DeSpikeNet(**SMALL), DeSpikeNet(**SMALL, fusion_attention='physical')
    assert all(isinstance(level.fusion, CandidateAttentionFusion) for level in default.levels)
    assert list(default.state_dict()) == list(physical.state_dict())
    assert isinstance(DeSpikeNet(**SMALL, transformer_fusion=False).levels[0].fusion, ConcatConvFusion)
    with torch.no_grad():
        out = plain.eval()(random_spikes(1, 32, 10, 12))
    assert out.shape == (1, 1, 10, 12) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match='fusion_attention must be one of physical, plain_qkv'):
        DeSpikeNet(**SMALL, fusion_attention='qkv')
    with pytest.raises(ValueError, match='needs transformer_fusion: true'):
        DeSpikeNet(**SMALL, transformer_fusion=False, fusion_attention='plain_qkv')
    with pytest.raises(ValueError, match='region_size must be 1'):
        DeSpikeNet(**SMALL, region_size=2, fusion_attention='plain_qkv')


def test_same_seed_same_network():
    outputs = []
    for _ in range(2):
        torch.manual_seed(5)
        with torch.no_grad():
            outputs.append(DeSpikeNet(**SMALL).eval()(random_spikes(1, 32, 8, 8)))
    torch.testing.assert_close(outputs[0], outputs[1], rtol=0, atol=0)


def test_gaussian_kernel_is_normalised_and_matches_the_formula():
    kernel = gaussian_kernel_2d(1.5, 7)
    assert kernel.shape == (7, 7)
    torch.testing.assert_close(kernel.sum(), torch.tensor(1.0))
    # ratio of two entries depends only on the squared distances: exp(−(r1² − r0²) / 2σ²)
    torch.testing.assert_close(kernel[3, 5] / kernel[3, 3], torch.exp(torch.tensor(-4 / (2 * 1.5**2))))
    delta = gaussian_kernel_2d(0.0, 5)
    assert delta[2, 2] == 1 and delta.sum() == 1
    with pytest.raises(ValueError, match='odd'):
        gaussian_kernel_2d(1.0, 4)


def test_kernel_bank_is_initialised_with_gaussians_over_the_sigma_range():
    bank = PhysicalKernelBank(num_kernels=4, kernel_size=9, sigma_range=(0.0, 3.0))
    torch.testing.assert_close(bank.init_sigmas, torch.tensor([0.0, 1.0, 2.0, 3.0]))
    for j, sigma in enumerate((0.0, 1.0, 2.0, 3.0)):
        torch.testing.assert_close(bank.weight[j, 0], gaussian_kernel_2d(sigma, 9))
    feat = torch.rand(2, 3, 12, 10, generator=torch.Generator().manual_seed(0))
    candidates = bank(feat)
    assert candidates.shape == (2, 4, 3, 12, 10)
    torch.testing.assert_close(candidates[:, 0], feat, rtol=1e-5, atol=1e-5)  # σ = 0 is the identity
    flat = bank(torch.full((1, 2, 8, 8), 0.7))  # normalised kernels + replicate borders keep a flat field flat
    torch.testing.assert_close(flat, torch.full_like(flat, 0.7), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('height,width', [(11, 14), (17, 19), (1, 3)])
def test_fft_bank_equals_direct_convolution(height, width):
    generator = torch.Generator().manual_seed(0)
    feat = torch.rand(2, 3, height, width, generator=generator)
    kernels = torch.rand(4, 5, 5, generator=generator)  # not symmetric: checks the flip (true convolution)
    padded = F.pad(feat.reshape(6, 1, height, width), (2, 2, 2, 2), mode='replicate')
    direct = F.conv2d(padded, kernels.flip(-1, -2)[:, None]).reshape(2, 3, 4, height, width).transpose(1, 2)
    torch.testing.assert_close(fft_convolve_bank(feat, kernels), direct, rtol=1e-4, atol=1e-5)


def test_smooth_fft_sizes_have_only_small_prime_factors():
    assert [smooth_fft_size(n) for n in (1, 7, 11, 17, 21, 23, 138, 410)] == [1, 8, 12, 18, 24, 24, 144, 432]


def test_candidate_attention_picks_the_matching_candidate():
    # query equals key 1 with a large norm: softmax puts (almost) all weight on candidate 1
    keys = torch.zeros(1, 3, 4, 2, 2)
    keys[:, 0, 0] = 10
    keys[:, 1, 1] = 10
    keys[:, 2, 2] = 10
    values = torch.arange(3.0)[None, :, None, None, None].expand(1, 3, 4, 2, 2)
    out = candidate_attention(keys[:, 1], keys, values, num_heads=1)
    torch.testing.assert_close(out, torch.ones(1, 4, 2, 2), rtol=1e-4, atol=1e-4)
    # an all-zero query weights the candidates equally: the mean value
    out = candidate_attention(torch.zeros(1, 4, 2, 2), keys, values, num_heads=2)
    torch.testing.assert_close(out, torch.ones(1, 4, 2, 2))


def test_region_tokens_share_one_weight_per_region():
    torch.manual_seed(0)
    fusion = CandidateAttentionFusion(4, num_heads=1, region_size=2)
    query = torch.rand(1, 4, 6, 6)
    assert fusion(query, torch.rand(1, 4, 6, 6), PhysicalKernelBank(3, 5)).shape == (1, 4, 6, 6)
    keys = torch.rand(1, 3, 4, 3, 3)
    values = torch.rand(1, 3, 4, 6, 6)
    out = candidate_attention(torch.rand(1, 4, 3, 3), keys, torch.ones_like(values), num_heads=1)
    torch.testing.assert_close(out, torch.ones(1, 4, 6, 6))  # weights sum to 1 in every pixel of every region


def test_direct_bank_equals_the_fft_bank_and_serves_inference():
    from despike_basicsr.archs.despike_blocks import convolve_bank, direct_convolve_bank
    generator = torch.Generator().manual_seed(1)
    feat = torch.rand(2, 3, 13, 10, generator=generator)
    kernels = torch.rand(4, 5, 5, generator=generator)
    torch.testing.assert_close(direct_convolve_bank(feat, kernels), fft_convolve_bank(feat, kernels), rtol=1e-4,
                               atol=1e-5)
    bank = PhysicalKernelBank(num_kernels=4, kernel_size=5)
    with torch.no_grad():
        torch.testing.assert_close(bank(feat), fft_convolve_bank(feat, bank.weight[:, 0]), rtol=1e-4, atol=1e-5)
    assert bank(feat).requires_grad  # training takes the FFT path, with gradients
    torch.testing.assert_close(convolve_bank(feat, kernels), fft_convolve_bank(feat, kernels))


def test_channels_last_bank_equals_the_fft_bank():
    from despike_basicsr.archs.despike_blocks import channels_last_convolve_bank
    generator = torch.Generator().manual_seed(2)
    feat = torch.rand(2, 3, 13, 10, generator=generator)
    kernels = torch.rand(4, 5, 5, generator=generator)
    reference = fft_convolve_bank(feat, kernels)  # (B, m, C, H, W)
    torch.testing.assert_close(channels_last_convolve_bank(feat, kernels), reference.permute(0, 3, 4, 2, 1), rtol=1e-4,
                               atol=1e-5)


@pytest.mark.parametrize('num_heads', [1, 2])
def test_inference_fusion_layout_matches_the_training_layout(num_heads):
    """Without gradients the fusion runs in channels-last layout; it must give what the reference layout gives."""
    torch.manual_seed(3)
    fusion, bank = CandidateAttentionFusion(8, num_heads=num_heads), PhysicalKernelBank(num_kernels=3, kernel_size=5)
    with torch.no_grad():
        bank.weight.add_(0.05 * torch.randn_like(bank.weight))  # trained kernels are no longer exact Gaussians
    query, feat = torch.randn(2, 8, 11, 14), torch.randn(2, 8, 11, 14)
    reference = fusion(query, feat, bank)  # gradients recorded: the reference layout (FFT bank)
    assert reference.requires_grad
    with torch.no_grad():
        fast = fusion(query, feat, bank)
    torch.testing.assert_close(fast, reference.detach(), rtol=1e-4, atol=1e-5)
    fusion.region_size = 2  # region tokens keep the reference layout at inference too
    with torch.no_grad():
        regions = fusion(query, feat, bank)
    torch.testing.assert_close(regions, fusion(query, feat, bank).detach(), rtol=1e-4, atol=1e-5)


def test_network_inference_matches_the_training_forward():
    torch.manual_seed(4)
    net = DeSpikeNet(**SMALL)
    spikes = random_spikes(1, 32, 20, 28, seed=5)
    training_forward = net(spikes)
    with torch.no_grad():
        torch.testing.assert_close(net(spikes), training_forward.detach(), rtol=1e-4, atol=1e-5)
