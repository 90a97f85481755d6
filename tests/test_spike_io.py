"""Spike file formats: byte-exact .dat, .npz layouts, time packing, and clear errors for bad files."""
import os
import tempfile
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from despike_basicsr.spike.io import (PartialFrameWarning, RecordingReader, SpikeFileError, frame_bytes, load_spikes,
                                      pack_time, read_dat, read_npz, unpack_time, write_dat, write_npz)


def random_stream(shape, seed=0, p=0.3):
    return (np.random.default_rng(seed).random(shape) < p).astype(np.uint8)


def test_byte_level_example_pins_bit_order_and_flip(tmp_path):
    # upright frame, 2x4: row 0 = 1 0 0 0, row 1 = 0 0 1 1
    frame = np.array([[[1, 0, 0, 0], [0, 0, 1, 1]]], np.uint8)
    flipped = tmp_path / 'flip.dat'
    write_dat(flipped, frame)
    # on disk rows are swapped; pixel p = r*W + c -> bit p (LSB first):
    # disk row 0 = 0011 -> bits 2, 3; disk row 1 = 1000 -> bit 4
    assert flipped.read_bytes() == bytes([4 + 8 + 16])
    upright = tmp_path / 'upright.dat'
    write_dat(upright, frame, flipud=False)
    assert upright.read_bytes() == bytes([1 + 64 + 128])  # bit 0, bits 6 and 7
    np.testing.assert_array_equal(read_dat(flipped, 2, 4), frame)
    np.testing.assert_array_equal(read_dat(upright, 2, 4, flipud=False), frame)
    # reading the flipped file without flipping shows it upside down
    np.testing.assert_array_equal(read_dat(flipped, 2, 4, flipud=False), frame[:, ::-1])


def test_head_columns_are_dropped_and_written_as_zeros(tmp_path):
    # one row of 8 pixels + 16 head columns = 24 bits = 3 bytes per frame
    row = np.array([[[1, 1, 0, 0, 0, 0, 0, 1]]], np.uint8)
    path = tmp_path / 'head.dat'
    write_dat(path, row, head=True)
    assert path.read_bytes() == bytes([1 + 2 + 128, 0, 0])
    raw = tmp_path / 'raw.dat'
    raw.write_bytes(bytes([1 + 2 + 128, 0xFF, 0xFF]))  # the camera's head carries data we must ignore
    np.testing.assert_array_equal(read_dat(raw, 1, 8, head=True), row)
    assert frame_bytes(250, 400, head=True) == 13000 and frame_bytes(250, 400) == 12500


@pytest.mark.parametrize('shape', [(3, 250, 400), (4, 7, 13), (2, 1, 1), (5, 3, 5)])
@pytest.mark.parametrize('head', [False, True])
def test_dat_round_trip_is_bit_exact(tmp_path, shape, head):
    spikes = random_stream(shape, seed=sum(shape))
    path = tmp_path / 'x.dat'
    write_dat(path, spikes, head=head)
    assert os.path.getsize(path) == shape[0] * frame_bytes(shape[1], shape[2], head)
    back = read_dat(path, shape[1], shape[2], head=head)
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back, spikes)


def test_dat_frame_range_reads_only_those_frames(tmp_path):
    spikes = random_stream((10, 6, 10), seed=3)
    path = tmp_path / 'x.dat'
    write_dat(path, spikes)
    np.testing.assert_array_equal(read_dat(path, 6, 10, frames=(3, 7)), spikes[3:7])
    np.testing.assert_array_equal(read_dat(path, 6, 10, frames=slice(-2, None)), spikes[-2:])
    with pytest.raises(ValueError, match='selects no frames'):
        read_dat(path, 6, 10, frames=(8, 8))


def test_recording_reader_reads_windows_of_dat_and_npz(tmp_path):
    spikes = random_stream((12, 6, 10), seed=5)
    write_dat(tmp_path / 'rec.dat', spikes, head=True)
    write_npz(tmp_path / 'rec.npz', spikes, layout='seq')
    for reader in (RecordingReader(tmp_path / 'rec.dat', 6, 10, head=True), RecordingReader(tmp_path / 'rec.npz')):
        assert (reader.frames, reader.height, reader.width) == (12, 6, 10)
        np.testing.assert_array_equal(reader.read(3, 9), spikes[3:9])
    write_dat(tmp_path / 'plain.dat', spikes)
    with pytest.raises(SpikeFileError, match=r'plain\.dat: size .* not a whole number of frames.*head=False gives 12'):
        RecordingReader(tmp_path / 'plain.dat', 6, 10, head=True)  # head columns the file does not have
    with pytest.raises(SpikeFileError, match=r'rec\.npz: expected height 7'):
        RecordingReader(tmp_path / 'rec.npz', height=7)
    with pytest.raises(FileNotFoundError, match='nope.dat: no such recording'):
        RecordingReader(tmp_path / 'nope.dat')
    (tmp_path / 'rec.bin').write_bytes(b'\0')
    with pytest.raises(SpikeFileError, match="unknown recording extension '.bin'"):
        RecordingReader(tmp_path / 'rec.bin')


def test_dat_size_not_whole_frames_names_file_and_sizes(tmp_path):
    path = tmp_path / 'cut.dat'
    path.write_bytes(bytes(12500 * 2 + 7))
    with pytest.warns(PartialFrameWarning, match=r'cut\.dat: ends in part of a frame \(7 bytes left over after 2 whole '
                      r'frames of 12500 bytes'):
        assert read_dat(path).shape == (2, 250, 400)
    path.write_bytes(bytes(12493))
    with pytest.raises(SpikeFileError, match=r'cut\.dat.*12493 bytes.*multiple of 12500.*0 frames \+ 12493 bytes'):
        read_dat(path)


def test_dat_wrong_height_or_width(tmp_path):
    path = tmp_path / 'cam.dat'
    write_dat(path, random_stream((3, 250, 400)))
    with pytest.raises(SpikeFileError, match=r'cam\.dat.*37500 bytes.*multiple of 13000.*height=260, width=400.*'
                       r'height=250, width=400, head=False gives 3 frames'):
        read_dat(path, 260, 400)
    with pytest.raises(SpikeFileError, match=r'head=False gives 3 frames'):
        read_dat(path, head=True)  # 37500 is no multiple of 13000


def test_dat_empty_and_missing_files(tmp_path):
    empty = tmp_path / 'empty.dat'
    empty.write_bytes(b'')
    with pytest.raises(SpikeFileError, match=r'empty\.dat: empty file.*12500 bytes'):
        read_dat(empty)
    with pytest.raises(FileNotFoundError, match='nope.dat'):
        read_dat(tmp_path / 'nope.dat')


def test_write_rejects_non_binary_and_wrong_dtype(tmp_path):
    with pytest.raises(SpikeFileError, match=r'binary 0/1.*\[2, 2\]'):
        write_dat(tmp_path / 'a.dat', np.full((1, 2, 2), 2, np.uint8))
    with pytest.raises(SpikeFileError, match='found dtype float32'):
        write_dat(tmp_path / 'a.dat', np.zeros((1, 2, 2), np.float32))
    with pytest.raises(SpikeFileError, match=r'\(T, H, W\).*\(2, 2\)'):
        write_npz(tmp_path / 'a.npz', np.zeros((2, 2), np.uint8))


@pytest.mark.parametrize('layout', ['spk', 'arr_0', 'seq'])
def test_npz_layouts_round_trip(tmp_path, layout):
    spikes = random_stream((11, 5, 7), seed=5)
    path = tmp_path / f'{layout}.npz'
    write_npz(path, spikes, layout=layout)
    np.testing.assert_array_equal(read_npz(path), spikes)
    np.testing.assert_array_equal(load_spikes(path, frames=(2, 9)), spikes[2:9])


def test_npz_public_conventions_by_hand(tmp_path):
    spikes = random_stream((9, 2, 3), seed=6)
    np.savez(tmp_path / 'hwt.npz', np.transpose(spikes, (1, 2, 0)))  # arr_0 is H x W x T
    np.testing.assert_array_equal(read_npz(tmp_path / 'hwt.npz'), spikes)
    # RSIR: frame i is bit (i & 7) of seq[i // 8]
    seq = np.zeros((2, 2, 3), np.uint8)
    for i in range(9):
        seq[i // 8] |= spikes[i] << (i & 7)
    np.savez(tmp_path / 'rsir.npz', seq=seq, length=9)
    np.testing.assert_array_equal(read_npz(tmp_path / 'rsir.npz'), spikes)


def test_npz_bad_inputs_name_file_and_found_values(tmp_path):
    np.savez(tmp_path / 'other.npz', frames=np.zeros((2, 2, 2), np.uint8))
    with pytest.raises(SpikeFileError, match=r"other\.npz: no known spike key.*'spk', 'arr_0', 'seq'.*'frames'"):
        read_npz(tmp_path / 'other.npz')
    np.savez(tmp_path / 'nb.npz', spk=np.full((2, 2, 2), 3, np.int32))
    with pytest.raises(SpikeFileError, match=r'nb\.npz \[spk\].*binary.*\[3, 3\]'):
        read_npz(tmp_path / 'nb.npz')
    np.savez(tmp_path / 'fl.npz', spk=np.zeros((2, 2, 2), np.float64))
    with pytest.raises(SpikeFileError, match=r'fl\.npz \[spk\].*dtype float64'):
        read_npz(tmp_path / 'fl.npz')
    np.savez(tmp_path / 'nolen.npz', seq=np.zeros((1, 2, 2), np.uint8))
    with pytest.raises(SpikeFileError, match=r'nolen\.npz.*"length"'):
        read_npz(tmp_path / 'nolen.npz')
    (tmp_path / 'junk.npz').write_bytes(b'not a zip')
    with pytest.raises(SpikeFileError, match=r'junk\.npz: not a readable \.npz'):
        read_npz(tmp_path / 'junk.npz')
    write_npz(tmp_path / 'ok.npz', np.zeros((2, 3, 4), np.uint8))
    with pytest.raises(SpikeFileError, match=r'ok\.npz: expected height 5, found 3'):
        load_spikes(tmp_path / 'ok.npz', height=5)
    with pytest.raises(SpikeFileError, match=r"unknown spike file extension '\.bin'"):
        load_spikes(tmp_path / 'x.bin')


def test_pack_time_bit_layout_by_hand():
    train = np.array([1, 0, 0, 0, 0, 0, 0, 1, 0, 1], np.uint8).reshape(10, 1, 1)
    packed = pack_time(train)
    assert packed.shape == (2, 1, 1)
    assert packed[0, 0, 0] == 1 + 128 and packed[1, 0, 0] == 2
    np.testing.assert_array_equal(unpack_time(packed, 10), train)
    np.testing.assert_array_equal(unpack_time(packed, 10, 6, 10), train[6:10])


def test_pack_time_torch_and_batched():
    spikes = random_stream((2, 13, 4, 5), seed=8)
    packed = pack_time(spikes)
    assert packed.shape == (2, 2, 4, 5)
    tensor_packed = pack_time(torch.from_numpy(spikes))
    assert isinstance(tensor_packed, torch.Tensor)
    np.testing.assert_array_equal(tensor_packed.numpy(), packed)
    back = unpack_time(tensor_packed, 13, 3, 12)
    assert isinstance(back, torch.Tensor)
    np.testing.assert_array_equal(back.numpy(), spikes[:, 3:12])
    with pytest.raises(ValueError, match='length 17 does not fit 2 byte planes'):
        unpack_time(packed, 17)
    with pytest.raises(ValueError, match=r'\[5, 20\) is outside the stream of length 13'):
        unpack_time(packed, 13, 5, 20)


SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(t=st.integers(1, 6), h=st.integers(1, 9), w=st.integers(1, 19), head=st.booleans(), flip=st.booleans(),
       seed=st.integers(0, 2**16))
def test_property_dat_round_trip(t, h, w, head, flip, seed):
    spikes = random_stream((t, h, w), seed=seed, p=0.5)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, 's.dat')
        write_dat(path, spikes, flipud=flip, head=head)
        np.testing.assert_array_equal(read_dat(path, h, w, flipud=flip, head=head), spikes)


@SETTINGS
@given(t=st.integers(1, 20), h=st.integers(1, 6), w=st.integers(1, 6), seed=st.integers(0, 2**16),
       layout=st.sampled_from(['spk', 'arr_0', 'seq']))
def test_property_npz_and_time_packing_round_trip(t, h, w, seed, layout):
    spikes = random_stream((t, h, w), seed=seed, p=0.5)
    np.testing.assert_array_equal(unpack_time(pack_time(spikes), t), spikes)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, 's.npz')
        write_npz(path, spikes, layout=layout)
        np.testing.assert_array_equal(read_npz(path), spikes)


@SETTINGS
@given(t=st.integers(1, 4), h=st.integers(1, 12), w=st.integers(1, 20), head=st.booleans(), data=st.data())
def test_property_truncated_dat_is_refused_or_read_to_its_whole_frames(t, h, w, head, data):
    nbytes = frame_bytes(h, w, head)
    cut = data.draw(st.integers(0, t * nbytes - 1))
    assume(cut % nbytes != 0 or cut == 0)
    whole = cut // nbytes
    spikes = random_stream((t, h, w), seed=cut)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, 's.dat')
        write_dat(path, spikes, head=head)
        with open(path, 'r+b') as f:
            f.truncate(cut)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always')
            try:
                got = read_dat(path, h, w, head=head)
            except SpikeFileError as err:  # less than a frame, or a size other reader settings fit exactly
                assert 's.dat' in str(err) and ('not a whole number of frames' in str(err) or cut == 0)
                return
    assert whole >= 1  # a file shorter than one frame is always refused
    np.testing.assert_array_equal(got, spikes[:whole])
    assert [type(w.message) for w in caught] == [PartialFrameWarning]
    assert f'({cut - whole * nbytes} bytes left over after {whole} whole frames' in str(caught[0].message)


@SETTINGS
@given(t=st.integers(1, 6), h=st.integers(1, 5), w=st.integers(1, 5), data=st.data())
def test_property_truncated_npz_always_raises(t, h, w, data):
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, 's.npz')
        write_npz(path, random_stream((t, h, w), seed=t * h * w, p=0.5))
        size = os.path.getsize(path)
        cut = data.draw(st.integers(0, size - 1))
        with open(path, 'r+b') as f:
            f.truncate(cut)
        with pytest.raises(SpikeFileError, match='s.npz'):
            read_npz(path)


def test_a_dat_cut_off_mid_frame_is_read_to_its_last_whole_frame_with_one_warning(tmp_path):
    spikes = random_stream((12, 6, 10), seed=6)  # 8 bytes a frame
    write_dat(tmp_path / 'rec.dat', spikes)
    cut = tmp_path / 'cut.dat'
    cut.write_bytes((tmp_path / 'rec.dat').read_bytes()[:-3])  # the camera stopped 5 bytes into the last frame
    with pytest.warns(PartialFrameWarning) as caught:
        reader = RecordingReader(cut, 6, 10)
        windows = [reader.read(0, 6), reader.read(6, 11)]
        np.testing.assert_array_equal(read_dat(cut, 6, 10), spikes[:11])
    assert [str(w.message) for w in caught] == [
        f'{cut}: ends in part of a frame (5 bytes left over after 11 whole frames of 8 bytes, height=6, width=10, '
        'head=False): a recording cut off mid-frame? Reading the 11 whole frames'
    ]
    assert reader.frames == 11
    np.testing.assert_array_equal(np.concatenate(windows), spikes[:11])
    (tmp_path / 'short.dat').write_bytes(bytes(5))
    with pytest.raises(SpikeFileError, match=r'short\.dat: size 5 bytes is not a whole number of frames: expected a '
                       r'multiple of 8 bytes for height=6, width=10, head=False, found 0 frames \+ 5 bytes'):
        read_dat(tmp_path / 'short.dat', 6, 10)
