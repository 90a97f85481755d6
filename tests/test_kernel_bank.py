"""The kernel bank's implementations: every form gives the FFT's convolution in both layouts, with and without
gradients; the choice is measured once per shape, can be fixed, and is never measured where it cannot be; denormal
kernel entries are flushed without changing the result or the gradients."""
import warnings

import pytest
import torch

from despike_basicsr.archs import despike_blocks as db
from despike_basicsr.archs.despike_arch import DeSpikeNet
from despike_basicsr.archs.despike_blocks import (BANK_IMPLS, PhysicalKernelBank, fft_convolve_bank,
                                                  flush_tiny_kernel_entries, unshuffled_bank_weight)


@pytest.fixture(autouse=True)
def fresh_plans(monkeypatch):
    monkeypatch.setattr(db, 'MIN_MEASURED_ELEMENTS', 0)  # measure even the toy shapes below
    db.set_bank_implementation(None)
    db.clear_bank_plans()
    yield
    db.set_bank_implementation(None)
    db.clear_bank_plans()


def _layout(reference: torch.Tensor, layout: str) -> torch.Tensor:
    return reference if layout == 'bmchw' else reference.permute(0, 3, 4, 2, 1)


@pytest.mark.parametrize('name', BANK_IMPLS)
@pytest.mark.parametrize('layout', ['bmchw', 'bhwcm'])
@pytest.mark.parametrize('shape', [(2, 3, 13, 10), (1, 2, 1, 3), (1, 4, 9, 7)])
def test_every_implementation_is_the_same_convolution(name, layout, shape):
    generator = torch.Generator().manual_seed(0)
    feat = torch.randn(*shape, generator=generator)
    kernels = torch.rand(4, 5, 5, generator=generator)  # not symmetric: checks the flip (true convolution)
    out = db._run_bank(name, feat, kernels, layout)
    torch.testing.assert_close(out, _layout(fft_convolve_bank(feat, kernels), layout), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('name', BANK_IMPLS)
def test_every_implementation_has_the_fft_gradients(name):
    generator = torch.Generator().manual_seed(1)
    feat = torch.randn(2, 3, 11, 9, generator=generator)
    kernels = torch.rand(3, 5, 5, generator=generator)
    grad_out = torch.randn(2, 3, 3, 11, 9, generator=generator)
    grads = []
    for impl in ('fft', name):
        x, k = feat.clone().requires_grad_(True), kernels.clone().requires_grad_(True)
        (db._run_bank(impl, x, k, 'bmchw') * grad_out).sum().backward()
        grads.append((x.grad, k.grad))
    torch.testing.assert_close(grads[1][0], grads[0][0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(grads[1][1], grads[0][1], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('factor', [1, 2, 3, 4])
def test_unshuffled_weight_places_every_tap_once(factor):
    weights = torch.arange(1.0, 1 + 2 * 7 * 7).reshape(2, 7, 7)
    dense = unshuffled_bank_weight(weights, factor)
    taps = (factor + 7 - 2) // factor + 1
    assert dense.shape == (2 * factor**2, factor**2, taps, taps)
    # every output sub-pixel sees each kernel entry exactly once
    per_output = dense.reshape(2, factor**2, -1)
    for j in range(2):
        for a in range(factor**2):
            values = per_output[j, a][per_output[j, a] != 0]
            assert sorted(values.tolist()) == weights[j].reshape(-1).tolist()


def test_denormal_kernel_entries_are_flushed_without_changing_the_result():
    bank = PhysicalKernelBank(num_kernels=8, kernel_size=11, sigma_range=(0.5, 3.0))
    kernels = bank.weight[:, 0].detach()
    tiny = torch.finfo(torch.float32).tiny
    assert ((kernels.abs() < tiny) & (kernels != 0)).any()  # the σ = 0.5 corners: 1e-44
    flushed = flush_tiny_kernel_entries(kernels)
    assert not ((flushed.abs() < tiny) & (flushed != 0)).any()
    assert torch.equal(flushed[kernels.abs() >= 1e-18], kernels[kernels.abs() >= 1e-18])
    feat = torch.randn(1, 2, 15, 12, generator=torch.Generator().manual_seed(2))
    for name in BANK_IMPLS:
        torch.testing.assert_close(db._run_bank(name, feat, kernels, 'bmchw'), fft_convolve_bank(feat, kernels),
                                   rtol=1e-4, atol=1e-5)


def test_flushing_passes_the_gradient_to_every_entry():
    kernels = PhysicalKernelBank(num_kernels=2, kernel_size=11, sigma_range=(0.5, 1.0)).weight[:, 0].detach()
    kernels.requires_grad_(True)
    flush_tiny_kernel_entries(kernels).sum().backward()
    assert torch.equal(kernels.grad, torch.ones_like(kernels))


def test_the_choice_is_measured_once_per_shape_and_remembered():
    feat, kernels = torch.randn(1, 4, 12, 10), torch.rand(3, 5, 5)
    with torch.no_grad():
        first = db.bank_implementation(feat, kernels, 'bhwcm')
        assert first in BANK_IMPLS
        plans = db.bank_plans()
        assert list(plans.values()) == [first]
        assert db.bank_implementation(feat, kernels, 'bhwcm') == first
        assert db.bank_plans() == plans  # not measured again
        db.bank_implementation(torch.randn(1, 4, 6, 5), kernels, 'bhwcm')
    assert len(db.bank_plans()) == 2
    x, k = feat.clone().requires_grad_(True), kernels.clone().requires_grad_(True)
    assert db.bank_implementation(x, k, 'bmchw') in BANK_IMPLS
    assert any(key[1] for key in db.bank_plans())  # with gradients: a plan of its own (forward + backward timed)
    assert x.grad is None and k.grad is None  # measuring leaves the caller's tensors alone


def test_a_fixed_implementation_wins_and_a_bad_name_is_refused(monkeypatch):
    feat, kernels = torch.randn(1, 2, 8, 8), torch.rand(2, 3, 3)
    db.set_bank_implementation('unshuffle2')
    assert db.bank_implementation(feat, kernels, 'bhwcm') == 'unshuffle2'
    assert db.bank_plans() == {}
    db.set_bank_implementation(None)
    monkeypatch.setenv(db.BANK_IMPL_ENV, 'depthwise_cl')
    assert db.bank_implementation(feat, kernels, 'bmchw') == 'depthwise_cl'
    monkeypatch.setenv(db.BANK_IMPL_ENV, 'winograd')
    with pytest.raises(ValueError, match='winograd'):
        db.bank_implementation(feat, kernels, 'bmchw')
    with pytest.raises(ValueError, match='unknown'):
        db.set_bank_implementation('winograd')


def test_small_inputs_are_not_measured(monkeypatch):
    monkeypatch.setattr(db, 'MIN_MEASURED_ELEMENTS', 1000)
    kernels = torch.rand(2, 3, 3)
    with torch.no_grad():
        assert db.bank_implementation(torch.randn(1, 2, 8, 8), kernels, 'bhwcm') == 'grouped_cl'
        assert db.bank_plans() == {}
        db.bank_implementation(torch.randn(1, 2, 32, 32), kernels, 'bhwcm')
    assert len(db.bank_plans()) == 1


def test_nothing_is_measured_while_tracing_or_under_autocast():
    feat, kernels = torch.randn(1, 2, 8, 8), torch.rand(2, 3, 3)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert db.bank_implementation(feat, kernels, 'bhwcm') == 'grouped_cl'
    assert db.bank_implementation(feat.requires_grad_(True), kernels, 'bmchw') != '' and db.bank_plans()
    db.clear_bank_plans()
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', FutureWarning)  # torch.jit.trace is deprecated; torch.onnx still traces
        torch.jit.trace(lambda x: db.convolve_bank(x, kernels), torch.randn(1, 2, 8, 8), check_trace=False)
    assert db.bank_plans() == {}


@pytest.mark.parametrize('name', BANK_IMPLS)
def test_the_network_gives_the_same_image_with_every_implementation(name):
    torch.manual_seed(4)
    net = DeSpikeNet(num_feat=8, windows=[16, 24], num_kernels=3, kernel_size=5, num_blocks=1, num_heads=2).eval()
    spikes = (torch.rand(1, 24, 20, 28, generator=torch.Generator().manual_seed(5)) < 0.3).to(torch.uint8)
    with torch.no_grad():
        db.set_bank_implementation('fft')
        reference = net(spikes)
        db.set_bank_implementation(name)
        torch.testing.assert_close(net(spikes), reference, rtol=1e-4, atol=1e-5)


def test_a_bank_weight_first_built_under_inference_mode_still_trains():
    """The cached space-to-depth index must not be an inference tensor (it would break the next backward pass)."""
    db._UNSHUFFLE_INDEX.clear()
    kernels = torch.rand(2, 3, 3)
    with torch.inference_mode():
        db.unshuffled_bank_weight(kernels, 2)
    trainable = kernels.clone().requires_grad_(True)
    db.unshuffled_bank_weight(trainable, 2).sum().backward()
    assert trainable.grad is not None and torch.isfinite(trainable.grad).all()


def _mock_timings(monkeypatch, costs):
    """Replace the bank by a stub whose CPU time is ``costs[name]`` (a virtual clock), recording the thread count
    each form ran at."""
    clock = [0.0]
    threads_seen = []

    def fake_run(name, feat, kernels, layout):
        threads_seen.append(torch.get_num_threads())
        clock[0] += costs[name]
        return feat.new_zeros(1)

    monkeypatch.setattr(db, '_run_bank', fake_run)
    monkeypatch.setattr(db, '_subpixel_consumer', lambda feat, out: None)
    monkeypatch.setattr(db.time, 'process_time', lambda: clock[0])
    return threads_seen


def test_the_choice_is_measured_at_one_thread_and_kept_for_every_thread_count(monkeypatch):
    """Issue 23: spin-waiting threads corrupt a multi-thread CPU-time measurement, so the forms are timed at one
    thread (the caller's count restored) and the choice holds for any count; given the timings it is deterministic."""
    costs = {name: 10.0 + i for i, name in enumerate(BANK_IMPLS)}
    costs['unshuffle2'] = 1.0
    threads_seen = _mock_timings(monkeypatch, costs)
    feat, kernels = torch.randn(1, 4, 12, 10), torch.rand(3, 5, 5)
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with torch.no_grad():
            assert db.bank_implementation(feat, kernels, 'subpixel') == 'unshuffle2'
        assert torch.get_num_threads() == 2  # restored
        assert threads_seen and set(threads_seen) == {1}
        assert len(threads_seen) == 3 * len(BANK_IMPLS)  # a warm-up round and two timed ones
        torch.set_num_threads(1)
        with torch.no_grad():
            assert db.bank_implementation(feat, kernels, 'subpixel') == 'unshuffle2'
        assert len(threads_seen) == 3 * len(BANK_IMPLS)  # another thread count: not measured again
        assert list(db.bank_plans()) == [('subpixel', False, (1, 4, 12, 10), torch.float32, (3, 5, 5))]
        # the same timings give the same choice; equal times go to the earlier form of BANK_IMPLS
        for _ in range(3):
            db.clear_bank_plans()
            with torch.no_grad():
                assert db.bank_implementation(feat, kernels, 'bhwcm') == 'unshuffle2'
        costs.update({name: 5.0 for name in BANK_IMPLS})
        db.clear_bank_plans()
        with torch.no_grad():
            assert db.bank_implementation(feat, kernels, 'bhwcm') == BANK_IMPLS[0]
    finally:
        torch.set_num_threads(previous)


def test_the_thread_count_is_restored_when_measuring_fails(monkeypatch):
    def failing_run(name, feat, kernels, layout):
        assert torch.get_num_threads() == 1
        raise RuntimeError('oneDNN refused')

    monkeypatch.setattr(db, '_run_bank', failing_run)
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with torch.no_grad(), pytest.raises(RuntimeError, match='oneDNN refused'):
            db.bank_implementation(torch.randn(1, 4, 12, 10), torch.rand(3, 5, 5), 'bmchw')
        assert torch.get_num_threads() == 2 and db.bank_plans() == {}
    finally:
        torch.set_num_threads(previous)
