"""HierarchicalMSELoss, FFTLoss, LPIPSLoss and the LPIPS metric: hand-computable cases and clear errors."""
import math
import urllib.error

import numpy as np
import pytest
import torch
import torchvision
from basicsr.utils.registry import LOSS_REGISTRY, METRIC_REGISTRY

from despike_basicsr.losses import lpips_net
from despike_basicsr.losses.fft_loss import FFTLoss
from despike_basicsr.losses.hierarchical_mse_loss import HierarchicalMSELoss, default_temporal_weights
from despike_basicsr.losses.lpips_loss import LPIPSLoss
from despike_basicsr.metrics.lpips_metric import calculate_lpips


def constant(value: float, size: int, batch: int = 1) -> torch.Tensor:
    return torch.full((batch, 1, size, size), value)


# ---------------------------------------------------------------- hierarchical MSE


def test_losses_and_metric_are_registered():
    for name in ('HierarchicalMSELoss', 'FFTLoss', 'LPIPSLoss'):
        assert name in LOSS_REGISTRY
    assert 'calculate_lpips' in METRIC_REGISTRY


def test_hierarchical_mse_weights_each_cell():
    gt = constant(0.5, 8)
    # grid[i][s]: outputs at 2 x 2, 4 x 4, 8 x 8 with constant errors e_{i,s}
    errors = [[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]]
    grid = [[constant(0.5 + e, 2 * 2**s) for s, e in enumerate(row)] for row in errors]
    loss = HierarchicalMSELoss(loss_weight=2.0, temporal_weights=[0.1, 1.0], scale_weights=[1.0, 0.5, 2.0])
    expected = 2.0 * (0.1 * (1.0 * 0.01 + 0.5 * 0.04 + 2.0 * 0.09) + 1.0 * (1.0 * 0.16 + 0.5 * 0.25 + 2.0 * 0.36))
    assert loss(grid, gt).item() == pytest.approx(expected, rel=1e-5)


def test_hierarchical_mse_downsamples_gt_by_area_averaging():
    gt = torch.tensor([[1.0, 3.0, 0.0, 0.0], [5.0, 7.0, 0.0, 4.0]])[None, None]  # 2 x 4
    coarse = torch.tensor([[4.0, 1.0]])[None, None]  # the means of the two 2 x 2 blocks
    assert HierarchicalMSELoss()([[coarse, gt.clone()]], gt).item() == pytest.approx(0.0, abs=1e-7)
    wrong = coarse + torch.tensor([[1.0, 0.0]])
    assert HierarchicalMSELoss()([[wrong, gt.clone()]], gt).item() == pytest.approx(0.5)


def test_hierarchical_mse_default_weights():
    assert default_temporal_weights(5) == [0.1, 0.3, 0.5, 0.7, 1.0]
    assert default_temporal_weights(1) == [1.0]
    assert default_temporal_weights(3) == pytest.approx([0.1, 0.55, 1.0])
    weights = HierarchicalMSELoss().weights_for(5, 3)
    assert weights.shape == (5, 3)
    torch.testing.assert_close(weights[:, 0], torch.tensor([0.1, 0.3, 0.5, 0.7, 1.0]))
    torch.testing.assert_close(weights[:, 2], weights[:, 0])  # w_s = 1 for every scale
    gt = constant(0.0, 4)
    grid = [[constant(1.0, 4)] for _ in range(5)]  # MSE 1 in every cell
    assert HierarchicalMSELoss()(grid, gt).item() == pytest.approx(0.1 + 0.3 + 0.5 + 0.7 + 1.0)


def test_hierarchical_mse_accepts_a_single_tensor_and_gives_gradients():
    out = constant(0.25, 4).requires_grad_()
    loss = HierarchicalMSELoss(loss_weight=3.0)(out, constant(0.75, 4))
    assert loss.item() == pytest.approx(3.0 * 0.25)
    loss.backward()
    torch.testing.assert_close(out.grad, torch.full_like(out, 3.0 * 2 * -0.5 / 16))


def test_hierarchical_mse_mismatched_weights_are_clear_errors():
    grid = [[constant(0.0, 2), constant(0.0, 4)]] * 3
    with pytest.raises(ValueError, match='temporal_weights has 5 values but the grid has 3 temporal scales'):
        HierarchicalMSELoss(temporal_weights=[0.1, 0.3, 0.5, 0.7, 1.0])(grid, constant(0.0, 4))
    with pytest.raises(ValueError, match='scale_weights has 3 values but the grid has 2 spatial scales'):
        HierarchicalMSELoss(scale_weights=[1, 1, 1])(grid, constant(0.0, 4))
    with pytest.raises(ValueError, match='same number of spatial scales'):
        HierarchicalMSELoss()([[constant(0.0, 4)], [constant(0.0, 2), constant(0.0, 4)]], constant(0.0, 4))


# ---------------------------------------------------------------- FFT


def test_fft_loss_of_identical_images_is_zero():
    img = torch.rand(2, 1, 9, 12, generator=torch.Generator().manual_seed(0))
    assert FFTLoss()(img, img.clone()).item() == 0.0


def test_fft_loss_of_a_constant_offset_is_its_dc_term():
    # a constant difference c puts c·H·W (unnormalised FFT) in the DC bin and nothing elsewhere
    height, width, c = 6, 8, 0.25
    pred, target = constant(0.5 + c, 1).expand(1, 1, height, width), constant(0.5, 1).expand(1, 1, height, width)
    elements = height * (width // 2 + 1) * 2
    assert FFTLoss()(pred, target).item() == pytest.approx(c * height * width / elements)
    assert FFTLoss(norm='ortho')(pred, target).item() == pytest.approx(c * math.sqrt(height * width) / elements)
    assert FFTLoss(loss_weight=0.2, reduction='sum')(pred, target).item() == pytest.approx(0.2 * c * height * width)
    assert FFTLoss(reduction='none')(pred, target).shape == (1, 1, height, width // 2 + 1, 2)


def test_fft_loss_sees_a_single_frequency():
    # cos(2πx/W) along the width has two half-amplitude bins, at ±1; rfft keeps +1: |H·W/2|
    height, width = 4, 8
    x = torch.arange(width, dtype=torch.float64)
    wave = torch.cos(2 * math.pi * x / width).expand(1, 1, height, width)
    loss = FFTLoss(reduction='sum')(wave, torch.zeros_like(wave))
    assert loss.item() == pytest.approx(height * width / 2, rel=1e-5)


def test_fft_loss_bad_options_and_shapes():
    with pytest.raises(ValueError, match="reduction must be one of .*got 'avg'"):
        FFTLoss(reduction='avg')
    with pytest.raises(ValueError, match="norm must be one of .*got 'unit'"):
        FFTLoss(norm='unit')
    with pytest.raises(ValueError, match=r'same shape, got \(1, 1, 4, 4\) and \(1, 1, 4, 5\)'):
        FFTLoss()(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 5))


# ---------------------------------------------------------------- LPIPS


@pytest.fixture(scope='module')
def random_lpips() -> LPIPSLoss:
    return LPIPSLoss(pretrained=False)


def test_lpips_random_backbone_runs_and_gives_gradients(random_lpips):
    generator = torch.Generator().manual_seed(0)
    gt = torch.rand(2, 1, 40, 36, generator=generator)
    pred = torch.rand(2, 1, 40, 36, generator=generator).requires_grad_()
    assert random_lpips(gt, gt.clone()).item() == pytest.approx(0.0, abs=1e-7)
    loss = random_lpips(pred, gt)
    assert loss.item() > 0
    loss.backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in random_lpips.parameters())
    assert LPIPSLoss(pretrained=False, reduction='none')(pred, gt).shape == (2, )


def test_lpips_single_channel_is_repeated_to_rgb(random_lpips):
    generator = torch.Generator().manual_seed(1)
    a, b = torch.rand(1, 1, 32, 32, generator=generator), torch.rand(1, 1, 32, 32, generator=generator)
    torch.testing.assert_close(random_lpips(a, b), random_lpips(a.repeat(1, 3, 1, 1), b.repeat(1, 3, 1, 1)))


def test_lpips_random_backbone_is_seeded_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(1)
    torch.manual_seed(123)
    first = lpips_net.build_lpips_net(pretrained=False)
    assert torch.equal(torch.rand(1), expected)
    second = lpips_net.build_lpips_net(pretrained=False)
    torch.testing.assert_close(first.net.slice1[0].weight, second.net.slice1[0].weight, rtol=0, atol=0)


def test_lpips_stays_in_eval_mode(random_lpips):
    random_lpips.train()
    assert random_lpips.training and not random_lpips.net.training
    a = torch.rand(1, 1, 32, 32, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(random_lpips(a, 1 - a), random_lpips(a, 1 - a))  # no active dropout


def test_lpips_too_small_and_mismatched_inputs(random_lpips):
    with pytest.raises(ValueError, match=r'at least 31×31 pixels, got 16×40'):
        random_lpips(torch.zeros(1, 1, 16, 40), torch.zeros(1, 1, 16, 40))
    with pytest.raises(ValueError, match='same shape'):
        random_lpips(torch.zeros(1, 1, 32, 32), torch.zeros(1, 1, 32, 33))
    with pytest.raises(ValueError, match=r'\(B, 1 or 3, H, W\)'):
        random_lpips(torch.zeros(1, 2, 32, 32), torch.zeros(1, 2, 32, 32))


def test_lpips_missing_backbone_file_is_a_clear_error(tmp_path):
    missing = tmp_path / 'nowhere' / 'alexnet.pth'
    with pytest.raises(lpips_net.LPIPSWeightsError) as info:
        LPIPSLoss(pretrained=True, backbone_path=str(missing))
    message = str(info.value)
    assert 'alexnet-owt-7be5be79.pth' in message and str(missing) in message
    assert lpips_net.ALEXNET_URL in message and 'pretrained: false' in message


def test_lpips_failed_download_names_the_cache_path(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, 'get_dir', lambda: str(tmp_path / 'hub'))

    def offline(*args, **kwargs):
        raise urllib.error.URLError('Name or service not known')

    monkeypatch.setattr(torch.hub, 'load_state_dict_from_url', offline)
    with pytest.raises(lpips_net.LPIPSWeightsError) as info:
        lpips_net.build_lpips_net(pretrained=True)
    expected_path = str(tmp_path / 'hub' / 'checkpoints' / 'alexnet-owt-7be5be79.pth')
    assert expected_path in str(info.value)
    assert 'download failed' in str(info.value) and 'Name or service not known' in str(info.value)
    with pytest.raises(lpips_net.LPIPSWeightsError):
        calculate_lpips(np.zeros((32, 32), np.uint8), np.zeros((32, 32), np.uint8), 0, backbone_path=None)


def test_lpips_loads_a_backbone_file_into_every_alexnet_layer(tmp_path, monkeypatch):
    torch.manual_seed(7)
    alexnet = torchvision.models.alexnet(weights=None)
    path = tmp_path / 'hub' / 'checkpoints' / 'alexnet-owt-7be5be79.pth'
    path.parent.mkdir(parents=True)
    torch.save(alexnet.state_dict(), path)
    monkeypatch.setattr(torch.hub, 'get_dir', lambda: str(tmp_path / 'hub'))  # found in the cache, no download
    net = lpips_net.build_lpips_net(pretrained=True)
    loaded = dict(net.net.named_parameters())
    for index in (0, 3, 6, 8, 10):  # AlexNet's five convolutions, spread over LPIPS's five slices
        name = next(n for n in loaded if n.endswith(f'.{index}.weight'))
        torch.testing.assert_close(loaded[name], alexnet.features[index].weight, rtol=0, atol=0)
    shipped = torch.load(lpips_net.lpips_linear_weights_path(), map_location='cpu', weights_only=True)
    torch.testing.assert_close(net.lin0.model[1].weight, shipped['lin0.model.1.weight'])


def test_lpips_metric_on_uint8_images():
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (40, 48), dtype=np.uint8)
    assert calculate_lpips(gray, gray.copy(), crop_border=0, pretrained=False) == pytest.approx(0.0, abs=1e-7)
    far = calculate_lpips(gray, 255 - gray, crop_border=0, pretrained=False)
    near = calculate_lpips(gray, np.clip(gray.astype(int) + 8, 0, 255).astype(np.uint8), 0, pretrained=False)
    assert far > near > 0
    color = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
    assert calculate_lpips(color, color[..., ::-1].copy(), 4, pretrained=False) > 0
    # crop_border: differences confined to the border do not count
    framed = gray.copy()
    framed[:4] = 0
    assert calculate_lpips(gray, framed, crop_border=4, pretrained=False) == pytest.approx(0.0, abs=1e-7)
    with pytest.raises(ValueError, match='image shapes differ'):
        calculate_lpips(gray, gray[:-1], 0, pretrained=False)


# ---------------------------------------------------------------- SSIM


def test_ssim_loss_matches_basicsr_ssim_and_prices_noise_in_flat_regions():
    from basicsr.metrics import calculate_ssim

    from despike_basicsr.losses.ssim_loss import SSIMLoss
    assert 'SSIMLoss' in LOSS_REGISTRY
    rng = np.random.default_rng(0)
    target = np.clip(rng.uniform(0.2, 0.8, (48, 48)) + np.linspace(0, 0.2, 48)[None], 0, 1)
    noisy = np.clip(target + 0.05 * rng.standard_normal(target.shape), 0, 1)
    loss = SSIMLoss()
    as_tensor = lambda a: torch.from_numpy(a).float()[None, None]  # noqa: E731
    value = loss(as_tensor(noisy), as_tensor(target)).item()
    reference = calculate_ssim(noisy[..., None] * 255, target[..., None] * 255, crop_border=0)
    assert value == pytest.approx(1 - reference, abs=2e-3)  # the same window and constants as BasicSR's metric
    assert loss(as_tensor(target), as_tensor(target)).item() == pytest.approx(0.0, abs=1e-6)
    flat = constant(0.5, 32)
    speckled = flat + 0.02 * torch.randn(flat.shape, generator=torch.Generator().manual_seed(0))
    mse_equal_shift = flat + 0.02  # the same MSE as the speckle, but no structure lost
    assert loss(speckled, flat) > 10 * loss(mse_equal_shift, flat)
    pred = as_tensor(noisy).requires_grad_()
    loss(pred, as_tensor(target)).backward()
    assert torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0
    with pytest.raises(ValueError, match='same shape'):
        loss(constant(0.5, 32), constant(0.5, 16))
    with pytest.raises(ValueError, match='smaller than the 11-pixel window'):
        loss(constant(0.5, 8), constant(0.5, 8))
    with pytest.raises(ValueError, match='window_size must be odd'):
        SSIMLoss(window_size=4)


# ---------------------------------------------------------------- low-frequency tone


def test_tone_loss_prices_a_dark_bias_relative_to_the_level_and_ignores_fine_noise():
    from despike_basicsr.archs.arch_util import gaussian_smooth
    from despike_basicsr.losses.tone_loss import LowFrequencyToneLoss

    assert 'LowFrequencyToneLoss' in LOSS_REGISTRY
    loss = LowFrequencyToneLoss(sigma=4.0, eps=0.05)
    dark, bright = constant(0.08, 48), constant(0.6, 48)
    # the same 0.01 too dark costs the dark region 0.01 / 0.13 and the bright one 0.01 / 0.65
    assert float(loss(dark - 0.01, dark)) == pytest.approx(0.01 / 0.13, rel=1e-4)
    assert float(loss(bright - 0.01, bright)) == pytest.approx(0.01 / 0.65, rel=1e-4)
    checker = torch.tensor([[0.02, -0.02], [-0.02, 0.02]]).repeat(24, 24)[None, None]
    assert float(loss(dark + checker, dark)) < 0.02 * float(loss(dark - 0.01, dark))  # zero-mean noise: nearly free
    assert torch.allclose(gaussian_smooth(dark, 4.0), dark, atol=1e-6)  # a level stays a level, borders included


def test_tone_loss_weighs_only_flagged_samples():
    from despike_basicsr.losses.tone_loss import LowFrequencyToneLoss

    loss = LowFrequencyToneLoss(loss_weight=2.0)
    target = constant(0.2, 16, batch=2)
    pred = target.clone()
    pred[1] -= 0.05  # only the second sample is off
    assert float(loss(pred, target, weight=torch.tensor([1.0, 0.0]))) == 0.0
    both = float(loss(pred, target))
    assert float(loss(pred, target, weight=torch.tensor([0.0, 1.0]))) == pytest.approx(2 * both, rel=1e-5)
    assert float(loss(pred, target, weight=torch.zeros(2))) == 0.0
    with pytest.raises(ValueError, match='same shape'):
        loss(pred, target[:1])
    with pytest.raises(ValueError, match='positive'):
        LowFrequencyToneLoss(sigma=0.0)
