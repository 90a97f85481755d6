"""Spk2ImgNet and RSIR, the learned spike front ends: sizes, shapes, dtypes, gradients and the pieces they are built on.

Tiny inputs only (the CI box has two cores): a stream of 2 x 41 x 23 x 21 is the largest one here.
"""
import pytest
import torch
from basicsr.archs import build_network
from torch.nn import functional as F

from despike_basicsr.archs.baseline_blocks import count_parameters
from despike_basicsr.archs.rsir_arch import haar_filters, shifted_window_mask
from despike_basicsr.archs.spk2imgnet_arch import block_starts, modulated_deform_conv

# Spike-Zoo's measurement of the official models (logs/params.log of github.com/chenkang455/Spike-Zoo, 2024-08-10).
PUBLISHED_PARAMS = {'Spk2ImgNet': 3.9042e6, 'RSIR': 0.2545e6}


def _net(name: str, **options) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_network(dict(type=name, **options))


def _spikes(batch: int, length: int, height: int, width: int, seed: int = 1, rate: float = 0.3) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(batch, length, height, width, generator=generator) < rate).to(torch.uint8)


@pytest.mark.parametrize('name', ['Spk2ImgNet', 'RSIR'])
def test_parameter_count_within_five_percent_of_published(name):
    count = count_parameters(_net(name))
    print(f'{name}: {count} parameters (published {PUBLISHED_PARAMS[name]:.0f})')
    assert abs(count - PUBLISHED_PARAMS[name]) / PUBLISHED_PARAMS[name] < 0.05


@pytest.mark.parametrize('name,options', [('Spk2ImgNet', dict(num_feat=60)), ('RSIR', dict(hidden=20))])
def test_parameter_count_test_sees_a_width_change(name, options):
    count = count_parameters(_net(name, **options))
    assert abs(count - PUBLISHED_PARAMS[name]) / PUBLISHED_PARAMS[name] > 0.05


@pytest.mark.parametrize('name,options,length', [
    ('Spk2ImgNet', {}, 41),
    ('Spk2ImgNet', dict(num_frames=25), 25),
    ('RSIR', {}, 41),
    ('RSIR', dict(sub_window=8), 20),
])
def test_output_shape_for_odd_sizes_and_uint8_input(name, options, length):
    net = _net(name, **options).eval()
    spikes = _spikes(2, length, 23, 21)
    with torch.no_grad():
        out = net(spikes)
        as_float = net(spikes.float())
    assert out.shape == (2, 1, 23, 21) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert torch.allclose(out, as_float)


@pytest.mark.parametrize('name,length', [('Spk2ImgNet', 41), ('RSIR', 32)])
def test_gradients_reach_every_parameter(name, length):
    net = _net(name)
    net(_spikes(1, length, 12, 10, seed=2)).square().mean().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert missing == []


@pytest.mark.parametrize('name', ['Spk2ImgNet', 'RSIR'])
def test_eval_output_is_deterministic_and_depends_on_the_stream(name):
    net = _net(name).eval()
    spikes = _spikes(1, 41, 14, 18, seed=3)
    with torch.no_grad():
        first, second = net(spikes), net(spikes)
        other = net(_spikes(1, 41, 14, 18, seed=4))
    assert torch.equal(first, second)
    assert not torch.allclose(first, other)


def test_spk2imgnet_reads_the_centre_of_a_longer_stream():
    net = _net('Spk2ImgNet').eval()
    long_stream = _spikes(1, 64, 12, 12, seed=5)
    with torch.no_grad():
        assert torch.equal(net(long_stream), net(long_stream[:, 11:52]))


def test_spk2imgnet_blocks_follow_the_paper():
    assert block_starts(41, 5, 6) == [0, 7, 14, 21, 28]  # 13-frame blocks centred on frames 6, 13, 20, 27, 34
    assert block_starts(25, 5, 6) == [0, 3, 6, 9, 12]
    assert block_starts(42, 5, 6) == [0, 7, 14, 21, 28]  # one spare frame: the blocks stay centred (at 20, not 20.5)


def test_rsir_haar_transform_is_orthonormal_and_invertible():
    filters = haar_filters()
    assert torch.allclose(filters.flatten(1) @ filters.flatten(1).T, torch.eye(4))
    image = torch.rand(2, 1, 10, 6, generator=torch.Generator().manual_seed(6))
    bands = F.conv2d(image, filters, stride=2)
    assert torch.allclose(bands[:, 0], F.avg_pool2d(image, 2)[:, 0] * 2)  # low-low band: scaled 2x2 mean
    assert torch.allclose(F.conv_transpose2d(bands, filters, stride=2), image, atol=1e-6)


def test_rsir_shifted_window_mask_separates_the_wrapped_regions():
    mask = shifted_window_mask(16, 16, 8, 4, torch.device('cpu'))
    assert mask.shape == (4, 64, 64)
    assert torch.all(mask[0] == 0)  # the top-left window holds one region only
    # Bottom-right window: four regions of 4 x 4 pixels, each attending only to itself.
    assert int((mask[3] == 0).sum()) == 4 * 16 * 16


def test_rsir_fpn_and_dark_maps():
    net = _net('RSIR').eval()
    spikes = _spikes(2, 32, 11, 9, seed=7)
    with torch.no_grad():
        plain = net(spikes)
        assert torch.equal(net(spikes, gamma=torch.ones(1, 1, 11, 9), dark=torch.zeros(2, 1, 11, 9)), plain)
        assert not torch.allclose(net(spikes, gamma=torch.full((1, 1, 11, 9), 1.5)), plain)
        assert not torch.allclose(net(spikes, dark=torch.full((1, 1, 11, 9), 0.05)), plain)
    with pytest.raises(ValueError, match=r'gamma must be shaped \(2 or 1, 1, 11, 9\), found \(1, 1, 9, 11\)'):
        net(spikes, gamma=torch.ones(1, 1, 9, 11))


def test_modulated_deform_conv_is_torchvisions_arithmetic():
    """Values and every gradient equal torchvision's deform_conv2d (float64), borders and odd sizes included."""
    from torchvision.ops import deform_conv2d
    generator = torch.Generator().manual_seed(0)
    b, c, h, w, groups = 2, 4, 5, 7, 2
    tensors = [torch.randn(b, c, h, w, generator=generator, dtype=torch.float64),
               2 * torch.randn(b, 2 * groups * 9, h, w, generator=generator, dtype=torch.float64),
               torch.rand(b, groups * 9, h, w, generator=generator, dtype=torch.float64),
               torch.randn(3, c, 3, 3, generator=generator, dtype=torch.float64),
               torch.randn(3, generator=generator, dtype=torch.float64)]
    weights = torch.rand(b, 3, h, w, generator=generator, dtype=torch.float64)
    results = []
    for fn in (lambda x, o, m, k, bias: modulated_deform_conv(x, o, m, k, bias, padding=1),
               lambda x, o, m, k, bias: deform_conv2d(x, o, k, bias, padding=1, mask=m)):
        inputs = [t.clone().requires_grad_() for t in tensors]
        out = fn(*inputs)
        results.append([out] + list(torch.autograd.grad((out * weights).sum(), inputs)))
    for ours, theirs in zip(*results):
        assert torch.allclose(ours, theirs, atol=1e-9), (ours - theirs).abs().max()


def test_spk2imgnet_short_streams_spread_the_blocks():
    net = _net('Spk2ImgNet', num_feat=8, num_res_blocks=1, deform_groups=2).eval()
    assert block_starts(32, 5, 6) == [1, 5, 9, 13, 17]
    with torch.no_grad():
        for length in (32, 13):
            assert net(_spikes(1, length, 8, 8)).shape == (1, 1, 8, 8)


@pytest.mark.parametrize('name,message', [('Spk2ImgNet', 'at least 13 frames, found 12'),
                                          ('RSIR', r'\(B, T, H, W\) with T >= 1, found \(40, 8, 8\)')])
def test_bad_streams_are_named(name, message):
    net = _net(name)
    spikes = _spikes(1, 40, 8, 8)
    with pytest.raises(ValueError, match=message):
        net(spikes[:, :12] if name == 'Spk2ImgNet' else spikes[0])
