"""GKMNet and NRKNet baselines: sizes, shapes, gradients, and the paper equations each one is built on."""
import numpy as np
import pytest
import torch
from basicsr.utils.registry import ARCH_REGISTRY, LOSS_REGISTRY
from scipy import ndimage

from despike_basicsr.archs.baseline_blocks import count_parameters, separable_filter_bank
from despike_basicsr.archs.gkmnet_arch import gaussian_bank_1d, gaussian_mixture_blur, gkm_fixed_point_step
from despike_basicsr.archs.nrknet_arch import atom_kernels, neumann_series, recursive_kernel_stack, rkr_blur

PUBLISHED_PARAMS = {'GKMNet': 1.41e6, 'NRKNet': 6.09e6}


def _net(name: str, in_channels: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return ARCH_REGISTRY.get(name)(in_channels=in_channels)


def _smooth_image(height: int, width: int, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    image = ndimage.gaussian_filter(rng.random((height, width)), 1.5)
    return torch.from_numpy(image).float()[None, None]


@pytest.mark.parametrize('name', ['GKMNet', 'NRKNet'])
def test_parameter_count_close_to_published(name):
    count = count_parameters(_net(name, 3))
    print(f'{name}: {count} parameters at 3 channels (published {PUBLISHED_PARAMS[name]:.0f})')
    assert abs(count - PUBLISHED_PARAMS[name]) / PUBLISHED_PARAMS[name] < 0.10


@pytest.mark.parametrize('name', ['GKMNet', 'NRKNet'])
@pytest.mark.parametrize('in_channels,height,width', [(1, 60, 76), (3, 60, 76), (3, 61, 77)])
def test_forward_returns_coarse_to_fine_list(name, in_channels, height, width):
    net = _net(name, in_channels).eval()
    x = torch.rand(1, in_channels, height, width, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        outputs = net(x)
    expected = [(-(-height // 4), -(-width // 4)), (-(-height // 2), -(-width // 2)), (height, width)]
    assert [tuple(o.shape) for o in outputs] == [(1, in_channels) + size for size in expected]
    assert all(torch.isfinite(o).all() for o in outputs)


@pytest.mark.parametrize('name', ['GKMNet', 'NRKNet'])
def test_gradients_reach_every_parameter(name):
    net = _net(name, 1)
    x = torch.rand(1, 1, 18, 22, generator=torch.Generator().manual_seed(2))
    loss = sum(o.square().mean() for o in net(x))
    loss.backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert missing == []


@pytest.mark.parametrize('name', ['GKMNet', 'NRKNet'])
def test_bad_input_is_named(name):
    net = _net(name, 1)
    with pytest.raises(ValueError, match=r'in_channels=1, found input with 3 channels'):
        net(torch.rand(1, 3, 16, 16))
    with pytest.raises(ValueError, match=r'expects a \(B, 1, H, W\) tensor, found shape \(16, 16\)'):
        net(torch.rand(16, 16))


def test_gaussian_bank_sigmas_and_normalisation():
    sigmas = [0.25 * i for i in range(1, 22)]
    bank = gaussian_bank_1d(sigmas).double()
    assert bank.shape == (22, 2 * 16 + 1)  # identity + 21 Gaussians on radius ceil(3 * 5.25)
    assert torch.allclose(bank.sum(dim=1), torch.ones(22, dtype=torch.float64), atol=1e-6)
    taps = torch.arange(-16, 17, dtype=torch.float64)
    variances = (bank * taps**2).sum(dim=1)
    assert variances[0] == 0
    # Small sigmas are under-sampled, so only the resolved ones must match sigma^2 closely.
    resolved = torch.tensor(sigmas[3:], dtype=torch.float64)**2
    assert torch.allclose(variances[4:], resolved, rtol=0.02)


def test_gaussian_mixture_blur_matches_scipy_for_one_hot_mixtures():
    image = torch.rand(1, 1, 40, 44, generator=torch.Generator().manual_seed(3))
    bank = gaussian_bank_1d([0.25 * i for i in range(1, 22)])
    for index in (0, 4, 12, 21):
        mixture = torch.zeros(1, 22, 40, 44)
        mixture[:, index] = 1
        ours = gaussian_mixture_blur(image, mixture, bank)[0, 0].numpy()
        if index == 0:
            reference = image[0, 0].numpy()
        else:
            sigma = 0.25 * index
            reference = ndimage.gaussian_filter(image[0, 0].numpy().astype(np.float64), sigma, mode='nearest',
                                                truncate=16 / sigma)
        np.testing.assert_allclose(ours, reference, atol=1e-4)


def test_gaussian_mixture_blur_is_per_pixel():
    image = torch.rand(1, 2, 24, 24, generator=torch.Generator().manual_seed(4))
    bank = gaussian_bank_1d([0.25 * i for i in range(1, 22)])
    mixture = torch.zeros(1, 22, 24, 24)
    mixture[:, 0, :, :12] = 1  # left half stays sharp
    mixture[:, 8, :, 12:] = 1  # right half blurred with sigma 2
    out = gaussian_mixture_blur(image, mixture, bank)
    blurred = separable_filter_bank(image, bank[8:9])[:, :, 0]
    assert torch.allclose(out[..., :12], image[..., :12])
    assert torch.allclose(out[..., 12:], blurred[..., 12:], atol=1e-6)


def test_gkm_fixed_point_iteration_inverts_a_known_blur():
    sharp = _smooth_image(32, 32)
    bank = gaussian_bank_1d([0.25 * i for i in range(1, 22)])
    mixture = torch.zeros(1, 22, 32, 32)
    mixture[:, 4] = 1  # sigma = 1
    observed = gaussian_mixture_blur(sharp, mixture, bank)
    step = torch.ones(1, 1, 32, 32)
    estimate = observed
    errors = [float((estimate - sharp).abs().mean())]
    for _ in range(30):
        estimate = gkm_fixed_point_step(observed, estimate, mixture, step, bank)
        errors.append(float((estimate - sharp).abs().mean()))
    assert errors[-1] < 0.3 * errors[0]
    assert all(later <= earlier + 1e-7 for earlier, later in zip(errors, errors[1:]))
    # With the identity kernel one step returns the observation whatever the estimate.
    identity = torch.zeros_like(mixture)
    identity[:, 0] = 1
    assert torch.allclose(gkm_fixed_point_step(observed, torch.zeros_like(observed), identity, step, bank), observed)


def test_recursive_kernels_are_the_convolution_of_their_atoms():
    raw = torch.linspace(-2, 2, 5)
    atoms = atom_kernels(raw)
    assert torch.all(atoms > 0)
    assert torch.allclose(atoms.sum(dim=1), torch.ones(5))
    assert torch.allclose(atoms[:, 0], atoms[:, 2])
    delta = torch.zeros(1, 1, 21, 21)
    delta[..., 10, 10] = 1
    stack = recursive_kernel_stack(delta, atoms)
    kernel = np.array([1.0])
    for n, atom in enumerate(atoms.numpy().astype(np.float64), start=1):
        kernel = np.convolve(kernel, atom)
        radius = n
        expected = np.zeros((21, 21))
        expected[10 - radius:11 + radius, 10 - radius:11 + radius] = np.outer(kernel, kernel)
        np.testing.assert_allclose(stack[0, 0, n].numpy(), expected, atol=1e-6)
    assert torch.equal(stack[0, 0, 0], delta[0, 0])


def test_neumann_series_sums_powers_and_approaches_the_inverse():
    blurred_input = _smooth_image(28, 28, seed=5)
    atoms = atom_kernels(torch.full((21, ), 1.0))
    weights = torch.zeros(1, 22, 28, 28)
    weights[:, 3] = 1  # A = K_3 everywhere

    def blur(x):
        return rkr_blur(x, weights, atoms)

    explicit, power = blurred_input.clone(), blurred_input.clone()
    for _ in range(3):
        power = power - blur(power)  # (I - A)^j y
        explicit = explicit + power
    assert torch.allclose(neumann_series(blurred_input, weights, atoms, 3), explicit, atol=1e-5)

    sharp = _smooth_image(28, 28, seed=6)
    observed = blur(sharp)
    residuals = [float((blur(neumann_series(observed, weights, atoms, j)) - observed).abs().mean()) for j in (0, 4, 16)]
    assert residuals[0] > residuals[1] > residuals[2]


def test_multiscale_mse_matches_manual_sum_and_checks_weights():
    loss_cls = LOSS_REGISTRY.get('MultiScaleMSELoss')
    gen = torch.Generator().manual_seed(7)
    gt = torch.rand(2, 1, 16, 20, generator=gen)
    outputs = [torch.rand(2, 1, 4 * k, 5 * k, generator=gen) for k in (1, 2, 4)]
    weights = [0.2, 0.5, 1.0]
    manual = sum(w * torch.mean((o - torch.nn.functional.avg_pool2d(gt, 16 // o.shape[-2]))**2)
                 for w, o in zip(weights, outputs))
    loss = loss_cls(loss_weight=2.0, scale_weights=weights)(outputs, gt)
    assert torch.allclose(loss, 2.0 * manual)
    pyramid = [torch.nn.functional.avg_pool2d(gt, k) for k in (4, 2, 1)]
    assert float(loss_cls()(pyramid, gt)) < 1e-12
    assert torch.allclose(loss_cls()(outputs[-1], gt), torch.mean((outputs[-1] - gt)**2))
    with pytest.raises(ValueError, match=r'2 scale_weights \[1.0, 1.0\] but found 3 outputs'):
        loss_cls(scale_weights=[1, 1])(outputs, gt)
    with pytest.raises(ValueError, match="'mean' or 'sum', found 'none'"):
        loss_cls(reduction='none')


def test_shared_pad_and_resize_helpers_have_one_signature():
    from despike_basicsr.archs.arch_util import pad_to_multiple, upsample_to
    x = torch.arange(2 * 1 * 5 * 6, dtype=torch.float32).reshape(2, 1, 5, 6)
    padded = pad_to_multiple(x, 4)
    assert padded.shape == (2, 1, 8, 8) and torch.equal(padded[..., :5, :6], x)
    assert torch.equal(padded[..., 7, :6], x[..., 4, :]) and torch.equal(padded[..., :5, 7], x[..., :, 5])
    assert pad_to_multiple(x[0], 3).shape == (1, 6, 6) and pad_to_multiple(x, 1) is x
    assert upsample_to(x, (10, 12)).shape == (2, 1, 10, 12)
    assert upsample_to(x, padded.shape[-2:]).shape == (2, 1, 8, 8)
