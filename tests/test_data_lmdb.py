"""SpikeLMDBWriter / SpikeLMDBReader: round trips, cropped reads, atomic writes and clear errors."""
import json
import os
import pickle

import lmdb
import numpy as np
import pytest

from despike_basicsr.data.spike_lmdb import (LMDBKeyError, MetaInfoError, NotAnLMDBError, SpikeLMDBReader,
                                             SpikeLMDBWriter, packed_byte_count)


def _random_sample(rng, length=37, height=13, width=17):
    spikes = (rng.random((length, height, width)) < 0.3).astype(np.uint8)
    gt = rng.integers(0, 256, (height, width), dtype=np.uint8)
    return spikes, gt


@pytest.fixture()
def small_lmdb(tmp_path):
    rng = np.random.default_rng(0)
    samples = {f's{i}': _random_sample(rng, length=37 + i) for i in range(3)}
    path = str(tmp_path / 'small.lmdb')
    with SpikeLMDBWriter(path) as writer:
        for key, (spikes, gt) in samples.items():
            writer.add(key, gt, {'threshold': 2.0, 'eta': 1.0, 'seed': np.int64(5), 'sigma': np.float32(1.5)},
                       spikes=spikes)
    return path, samples


def test_round_trip_whole_and_meta(small_lmdb):
    path, samples = small_lmdb
    reader = SpikeLMDBReader(path)
    assert reader.keys == list(samples)
    for key, (spikes, gt) in samples.items():
        got_spikes, got_gt = reader.read_sample(key)
        np.testing.assert_array_equal(got_spikes, spikes)
        np.testing.assert_array_equal(got_gt, gt)
        meta = reader.meta(key)
        assert (meta['T'], meta['H'], meta['W']) == spikes.shape
        assert meta['center'] == spikes.shape[0] // 2
        assert meta['seed'] == 5 and meta['threshold'] == 2.0 and meta['sigma'] == pytest.approx(1.5)
        assert reader.shape(key) == spikes.shape


def test_meta_info_lines_follow_the_layout(small_lmdb):
    path, samples = small_lmdb
    with open(os.path.join(path, 'meta_info.txt'), encoding='utf-8') as f:
        lines = f.read().splitlines()
    assert len(lines) == len(samples)
    for line, (key, (spikes, _)) in zip(lines, samples.items()):
        name, shape, params = line.split(' ', 2)
        assert name == key
        assert shape == ','.join(str(v) for v in spikes.shape)
        assert json.loads(params)['T'] == spikes.shape[0]


def test_cropped_reads_match_slices(small_lmdb):
    path, samples = small_lmdb
    reader = SpikeLMDBReader(path)
    rng = np.random.default_rng(1)
    for key, (spikes, gt) in samples.items():
        length, height, width = spikes.shape
        for _ in range(20):
            t0 = int(rng.integers(0, length - 1))
            t1 = int(rng.integers(t0 + 1, length + 1))
            y0 = int(rng.integers(0, height - 1))
            y1 = int(rng.integers(y0 + 1, height + 1))
            x0 = int(rng.integers(0, width - 1))
            x1 = int(rng.integers(x0 + 1, width + 1))
            got_spikes, got_gt = reader.read_sample(key, t0, t1, y0, y1, x0, x1)
            np.testing.assert_array_equal(got_spikes, spikes[t0:t1, y0:y1, x0:x1])
            np.testing.assert_array_equal(got_gt, gt[y0:y1, x0:x1])


def test_window_outside_stream_is_refused(small_lmdb):
    path, _ = small_lmdb
    reader = SpikeLMDBReader(path)
    with pytest.raises(ValueError, match=r"sample 's0'.*t=\[0, 99\) is outside \[0, 37\)"):
        reader.read_sample('s0', 0, 99)


def test_packed_storage_is_eight_times_smaller(small_lmdb):
    path, samples = small_lmdb
    reader = SpikeLMDBReader(path)
    with reader._txn() as txn:
        stored = len(txn.get(b's0/spk'))
    assert stored == packed_byte_count(37, 13, 17) == 5 * 13 * 17
    assert samples['s0'][0].size / stored > 7


def test_reader_survives_pickling(small_lmdb):
    path, samples = small_lmdb
    reader = SpikeLMDBReader(path)
    reader.read_sample('s1')
    clone = pickle.loads(pickle.dumps(reader))
    np.testing.assert_array_equal(clone.read_sample('s1')[0], samples['s1'][0])


def test_refuses_to_overwrite_and_overwrites_when_asked(small_lmdb):
    path, _ = small_lmdb
    with pytest.raises(FileExistsError, match='already exists.*overwrite'):
        SpikeLMDBWriter(path)
    spikes, gt = _random_sample(np.random.default_rng(9), length=8)
    with SpikeLMDBWriter(path, overwrite=True) as writer:
        writer.add('only', gt, {}, spikes=spikes)
    reader = SpikeLMDBReader(path)
    assert reader.keys == ['only']
    np.testing.assert_array_equal(reader.read_sample('only')[0], spikes)
    assert sorted(os.listdir(os.path.dirname(path))) == ['small.lmdb']


def test_exception_midway_leaves_nothing(tmp_path):
    path = tmp_path / 'broken.lmdb'
    rng = np.random.default_rng(0)
    with pytest.raises(RuntimeError, match='injected'):
        with SpikeLMDBWriter(str(path)) as writer:
            spikes, gt = _random_sample(rng)
            writer.add('a', gt, {}, spikes=spikes)
            assert os.path.isdir(writer.tmp_path)
            raise RuntimeError('injected failure')
    assert os.listdir(tmp_path) == []


def test_writer_rejects_bad_keys_and_shapes(tmp_path):
    rng = np.random.default_rng(0)
    spikes, gt = _random_sample(rng)
    with pytest.raises(ValueError, match='name ends with ".lmdb"'):
        SpikeLMDBWriter(str(tmp_path / 'nope'))
    writer = SpikeLMDBWriter(str(tmp_path / 'w.lmdb'))
    with pytest.raises(ValueError, match='sample key must match'):
        writer.add('has space', gt, {}, spikes=spikes)
    writer.add('k', gt, {}, spikes=spikes)
    with pytest.raises(ValueError, match="duplicate sample key 'k'"):
        writer.add('k', gt, {}, spikes=spikes)
    with pytest.raises(ValueError, match=r"sample 'g': gt shape \(4, 4\) differs"):
        writer.add('g', gt[:4, :4], {}, spikes=spikes)
    writer.abort()
    assert os.listdir(tmp_path) == []


def test_empty_writer_writes_nothing(tmp_path):
    writer = SpikeLMDBWriter(str(tmp_path / 'empty.lmdb'))
    with pytest.raises(ValueError, match='no samples were added'):
        writer.close()
    assert os.listdir(tmp_path) == []


def test_missing_folder_and_non_lmdb_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match='does not exist'):
        SpikeLMDBReader(str(tmp_path / 'absent.lmdb'))
    plain = tmp_path / 'plain.lmdb'
    plain.mkdir()
    (plain / 'meta_info.txt').write_text('a 8,2,2 {}\n')
    with pytest.raises(NotAnLMDBError, match=r'plain.lmdb is not an LMDB folder: it has no data.mdb'):
        SpikeLMDBReader(str(plain))


def test_unknown_key_names_the_key(small_lmdb):
    reader = SpikeLMDBReader(small_lmdb[0])
    with pytest.raises(LMDBKeyError, match=r"key 'zzz' is not listed in .*meta_info.txt \(3 keys, e.g. s0, s1, s2\)"):
        reader.read_sample('zzz')


def test_meta_info_key_missing_from_data(small_lmdb):
    path, _ = small_lmdb
    with open(os.path.join(path, 'meta_info.txt'), 'a', encoding='utf-8') as f:
        f.write('ghost 8,13,17 {}\n')
    reader = SpikeLMDBReader(path)
    with pytest.raises(LMDBKeyError, match=r"record 'ghost/meta' is missing from .*small.lmdb.*line 4 lists key"):
        reader.read_sample('ghost')
    reader.read_sample('s0')  # the other keys stay readable


def test_meta_info_line_disagreeing_with_stored_data(small_lmdb):
    path, _ = small_lmdb
    meta_info = os.path.join(path, 'meta_info.txt')
    with open(meta_info, encoding='utf-8') as f:
        lines = f.read().splitlines()
    key, _, params = lines[1].split(' ', 2)
    lines[1] = f'{key} 64,13,17 {params}'
    with open(meta_info, 'w', encoding='utf-8') as f:
        f.write('\n'.join(lines) + '\n')
    reader = SpikeLMDBReader(path)
    reader.read_sample('s0')
    with pytest.raises(MetaInfoError, match=r"line 2 \(key 's1'\) says T,H,W = 64,13,17 but the stored s1/meta says "
                       r'38,13,17'):
        reader.read_sample('s1')


def test_meta_info_params_disagreeing_with_stored_data(small_lmdb):
    path, _ = small_lmdb
    meta_info = os.path.join(path, 'meta_info.txt')
    with open(meta_info, encoding='utf-8') as f:
        text = f.read()
    with open(meta_info, 'w', encoding='utf-8') as f:
        f.write(text.replace('"threshold":2.0', '"threshold":3.0', 1))
    with pytest.raises(MetaInfoError, match=r"line 1 \(key 's0'\) disagrees with the stored s0/meta on threshold: "
                       r'3.0 vs 2.0'):
        SpikeLMDBReader(path).meta('s0')


def test_malformed_meta_info_line(small_lmdb):
    path, _ = small_lmdb
    with open(os.path.join(path, 'meta_info.txt'), 'a', encoding='utf-8') as f:
        f.write('broken 12x13\n')
    with pytest.raises(MetaInfoError, match=r'meta_info.txt line 4: expected "<key> <T>,<H>,<W> <json>"'):
        SpikeLMDBReader(path)


def test_ground_truth_is_stored_raw_and_png_lmdbs_still_read(tmp_path):
    rng = np.random.default_rng(3)
    spikes, gt = _random_sample(rng, length=20, height=9, width=11)
    for gt_format in ('raw', 'png'):
        path = str(tmp_path / f'{gt_format}.lmdb')
        with SpikeLMDBWriter(path, gt_format=gt_format) as writer:
            writer.add('a', gt, {}, spikes=spikes)
        reader = SpikeLMDBReader(path)
        with reader._txn() as txn:
            stored = txn.get(b'a/gt')
        assert (stored == gt.tobytes()) == (gt_format == 'raw')
        assert stored.startswith(b'\x89PNG') == (gt_format == 'png')
        got_spikes, got_gt = reader.read_sample('a', 3, 17, 2, 7, 1, 10)
        np.testing.assert_array_equal(got_spikes, spikes[3:17, 2:7, 1:10])
        np.testing.assert_array_equal(got_gt, gt[2:7, 1:10])
    with pytest.raises(ValueError, match=r"gt_format must be one of \('raw', 'png'\), got 'jpg'"):
        SpikeLMDBWriter(str(tmp_path / 'j.lmdb'), gt_format='jpg')


def test_raw_ground_truth_that_looks_like_a_png_is_stored_as_png(tmp_path):
    spikes, gt = _random_sample(np.random.default_rng(4), length=8, height=4, width=4)
    gt.reshape(-1)[:8] = np.frombuffer(b'\x89PNG\r\n\x1a\n', np.uint8)
    with SpikeLMDBWriter(str(tmp_path / 'sig.lmdb')) as writer:
        writer.add('a', gt, {}, spikes=spikes)
    np.testing.assert_array_equal(SpikeLMDBReader(str(tmp_path / 'sig.lmdb')).read_sample('a')[1], gt)


def test_packed_window_unpacks_to_the_crop_and_commutes_with_flips(small_lmdb):
    path, samples = small_lmdb
    reader = SpikeLMDBReader(path)
    spikes, gt = samples['s2']  # 39 frames: the window starts and ends inside byte planes
    window, gt_crop = reader.read_packed('s2', 11, 30, 1, 12, 2, 15)
    assert window.planes.shape == (3, 11, 13) and window.planes.dtype == np.uint8  # planes 1..3 only
    np.testing.assert_array_equal(window.unpack(), spikes[11:30, 1:12, 2:15])
    np.testing.assert_array_equal(gt_crop, gt[1:12, 2:15])
    flipped = window._replace(planes=np.ascontiguousarray(np.swapaxes(window.planes[:, ::-1], -1, -2)))
    np.testing.assert_array_equal(flipped.unpack(), np.swapaxes(spikes[11:30, 1:12, 2:15][:, ::-1], -1, -2))


def test_undecodable_ground_truth_names_the_key(tmp_path):
    spikes, gt = _random_sample(np.random.default_rng(5), length=8, height=4, width=4)
    path = str(tmp_path / 'bad.lmdb')
    with SpikeLMDBWriter(path) as writer:
        writer.add('a', gt, {}, spikes=spikes)
    env = lmdb.open(path)
    with env.begin(write=True) as txn:
        txn.put(b'a/gt', b'short')
    env.close()
    with pytest.raises(MetaInfoError, match=r"key 'a' says H,W = 4,4 but the stored a/gt has 5 bytes, neither raw"):
        SpikeLMDBReader(path).read_sample('a')
