"""Tests of despike_basicsr.inference.tiling: tile layout, blending weights, padding and exact identity
reconstruction."""
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from despike_basicsr.inference.tiling import (blend_weights, count_tiles, reflect_pad_to_multiple, tile_starts,
                                              tiled_apply)


@given(length=st.integers(1, 400), tile=st.integers(1, 300), data=st.data())
@settings(max_examples=200, deadline=None)
def test_tile_starts_cover_with_overlap(length, tile, data):
    overlap = data.draw(st.integers(0, tile - 1))
    starts = tile_starts(length, tile, overlap)
    size = min(tile, length)
    assert starts[0] == 0
    assert starts[-1] + size == length
    assert starts == sorted(set(starts))
    covered = torch.zeros(length, dtype=torch.bool)
    for s in starts:
        covered[s:s + size] = True
    assert bool(covered.all())
    # neighbours share at least `overlap` pixels
    for a, b in zip(starts, starts[1:]):
        assert a + size - b >= overlap


def test_tile_starts_rejects_bad_overlap():
    with pytest.raises(ValueError, match='overlap must be in'):
        tile_starts(100, 32, 32)
    with pytest.raises(ValueError, match='length and tile'):
        tile_starts(0, 32, 4)


def test_blend_weights_ramp_only_on_inner_edges():
    w = blend_weights(10, 12, 4, edges=(False, True, True, False))
    assert w.shape == (10, 12)
    assert bool((w > 0).all()) and bool((w <= 1).all())
    # top edge is an image border: full weight in the first row away from the left ramp
    assert torch.allclose(w[0, 4:], torch.ones(8, dtype=w.dtype))
    # bottom edge ramps down towards the neighbour: 4/5, 3/5, 2/5, 1/5 in the last four rows (middle column)
    assert torch.allclose(w[6:, 8], torch.tensor([4, 3, 2, 1], dtype=w.dtype) / 5)
    # left edge ramps up
    assert torch.allclose(w[3, :4], torch.tensor([1, 2, 3, 4], dtype=w.dtype) / 5)


@pytest.mark.parametrize('height,width,tile,overlap,multiple', [
    (37, 53, 16, 4, 1),
    (100, 64, 32, 8, 8),
    (64, 64, 64, 8, 1),
    (20, 30, 256, 32, 4),
    (41, 41, 0, 0, 8),
    (90, 31, 17, 16, 2),
])
def test_identity_network_reconstructs_input_exactly(height, width, tile, overlap, multiple):
    torch.manual_seed(0)
    spikes = (torch.rand(2, 5, height, width) < 0.3).to(torch.uint8)
    gamma = 1 + 0.05 * torch.randn(2, 1, height, width)
    calls = []

    def identity(spk, gam):
        assert spk.dtype == torch.uint8  # inputs keep their dtype until the network converts them
        assert spk.shape[-2] % multiple == 0 and spk.shape[-1] % multiple == 0
        calls.append(tuple(spk.shape[-2:]))
        return spk.float() * gam

    out = tiled_apply(identity, [spikes, gamma], tile=tile, overlap=overlap, size_multiple=multiple)
    assert out.shape == (2, 5, height, width)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, spikes.float() * gamma, rtol=0, atol=1e-6)
    assert len(calls) == count_tiles(height, width, tile, overlap)


def test_none_inputs_pass_through_and_progress_counts_tiles():
    x = torch.rand(1, 1, 70, 70)
    seen = []
    ticks = []

    def fn(a, b):
        seen.append(b)
        return a

    out = tiled_apply(fn, [x, None], tile=32, overlap=8, progress=ticks.append)
    torch.testing.assert_close(out, x)
    assert all(b is None for b in seen)
    assert len(ticks) == count_tiles(70, 70, 32, 8) == 9


def test_tiled_local_filter_matches_whole_frame_away_from_blended_seams():
    # a 5x5 box filter with reflect padding: tiles differ from the whole-frame result only near tile borders,
    # and the linear ramps keep that difference small
    torch.manual_seed(1)
    x = torch.rand(1, 1, 96, 96)
    kernel = torch.full((1, 1, 5, 5), 1 / 25)

    def box(a):
        return F.conv2d(F.pad(a, (2, 2, 2, 2), mode='reflect'), kernel)

    whole = box(x)
    tiled = tiled_apply(box, [x], tile=40, overlap=16)
    assert (tiled - whole).abs().max() < 0.05
    # pixels covered by a single tile at least 2 px from any of its inner borders are identical
    torch.testing.assert_close(tiled[..., :20, :20], whole[..., :20, :20])


def test_reflect_pad_mirrors_without_repeating_edge():
    x = torch.arange(5, dtype=torch.uint8).view(1, 1, 5)
    x = x.expand(1, 3, 5).contiguous()
    padded = reflect_pad_to_multiple(x, 4)
    assert padded.shape == (1, 4, 8)
    assert padded.dtype == torch.uint8
    assert padded[0, 0].tolist() == [0, 1, 2, 3, 4, 3, 2, 1]
    assert reflect_pad_to_multiple(x[..., :4], 4).shape == (1, 4, 4)
    one = torch.ones(1, 1, 1)
    assert reflect_pad_to_multiple(one, 3).shape == (1, 3, 3)


def test_fn_with_wrong_output_rank_is_rejected():
    with pytest.raises(ValueError, match=r'must return \(B, C, H, W\)'):
        tiled_apply(lambda a: a[0], [torch.zeros(1, 1, 8, 8)], tile=4, overlap=1)
    with pytest.raises(ValueError, match='disagree on spatial size'):
        tiled_apply(lambda a, b: a, [torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 9)])
