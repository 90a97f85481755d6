"""The data-loading benchmark (despike_basicsr.evaluation.dataset_bench, scripts/bench_dataset.py) at a toy size."""
import pytest

from despike_basicsr.evaluation import dataset_bench


def test_run_measures_every_format_and_the_item_split():
    lines = []
    result = dataset_bench.run(num_samples=2, size=32, steps=16, crop=16, window=8, iters=2, workers=[0],
                               log=lines.append)
    assert set(result['rates']) == {('lmdb', 0), ('lmdb-float', 0), ('npy', 0)}
    assert all(rate > 0 for rate in result['rates'].values())
    # 16 steps of 32x32 bits packed: 2 planes of 1 KiB, against 16 KiB of uint8 frames
    assert result['bytes_per_sample']['npy'] > result['bytes_per_sample']['lmdb'] > 0
    assert list(result['item_ms']) == ['read packed crop + raw gt', 'flip/transpose packed', 'unpack',
                                       'old: flip/transpose unpacked', 'old: lq to float32']
    assert lines[0].startswith('built 2 samples of 32x32x16 in ') and lines[-1].startswith('one lmdb item, ms: ')


def test_a_crop_or_window_beyond_the_stored_streams_is_refused():
    with pytest.raises(ValueError, match='crop 64 / window 8 exceed the stored 32 px / 16 steps'):
        dataset_bench.run(num_samples=1, size=32, steps=16, crop=64, window=8, iters=1, workers=[0])
