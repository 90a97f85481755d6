"""SpikeLMDBDataset and SimulatedSpikeDataset: item shapes, windows, augmentation consistency, seeding, errors."""
import random

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from despike_basicsr.data import preparation as prep
from despike_basicsr.data.scenes import generate_scene
from despike_basicsr.data.simulated_spike_dataset import SimulatedSpikeDataset
from despike_basicsr.data.spike_lmdb import SpikeLMDBReader
from despike_basicsr.data.spike_lmdb_dataset import SpikeLMDBDataset
from despike_basicsr.spike.reconstruct import rate_to_display, tfp

SIZE, STEPS = 48, 96


def build_dataset(opt):
    """BasicSR's builder, imported late: ``despike_basicsr`` (its compat shim) must load before ``basicsr``."""
    from basicsr.data import build_dataset as basicsr_build_dataset

    return basicsr_build_dataset(opt)


def _scene_specs(count, size=SIZE):
    return [
        prep.SampleSpec(f's{i}', loader=lambda i=i: (generate_scene(size, size + 8, i)[0], None,
                                                     generate_scene(size, size + 8, i)[1])) for i in range(count)
    ]


@pytest.fixture(scope='module')
def depth_lmdb(tmp_path_factory):
    """Scenes with depth-varying defocus and a simulated sensor FPN (as the demo set)."""
    out = tmp_path_factory.mktemp('depth') / 'scenes.lmdb'
    config = prep.SimulationConfig(mode='depth', steps=STEPS, seed=1)
    return prep.prepare_lmdb(_scene_specs(3), str(out), config, progress=False)


@pytest.fixture(scope='module')
def sharp_lmdb(tmp_path_factory):
    """No blur, no FPN and a high rate: the TFP of a stream reproduces its ground truth closely."""
    out = tmp_path_factory.mktemp('sharp') / 'sharp.lmdb'
    config = prep.SimulationConfig(mode='thinlens', steps=STEPS, sigma_range=(0.0, 0.0), gain_std=0.0, threshold=1.0,
                                   seed=2)
    return prep.prepare_lmdb(_scene_specs(2), str(out), config, progress=False)


def _train_opt(root, **extra):
    opt = {'type': 'SpikeLMDBDataset', 'name': 'train', 'dataroot': root, 'io_backend': {'type': 'lmdb'},
           'phase': 'train', 'gt_size': 32, 'temporal_len': [40, 64], 'use_flip': True, 'use_rot': True}
    opt.update(extra)
    return opt


def _display_from_spikes(item, threshold):
    return rate_to_display(tfp(item['lq'].numpy(), window=item['lq'].shape[0]), 1.0, threshold)


def test_train_items_have_contract_shapes(depth_lmdb):
    random.seed(0)
    dataset = build_dataset(_train_opt(depth_lmdb, fpn=True))
    assert isinstance(dataset, SpikeLMDBDataset) and len(dataset) == 3
    lengths = set()
    for index in range(3):
        for _ in range(4):
            item = dataset[index]
            assert item['lq'].shape == (64, 32, 32) and item['lq'].dtype == torch.uint8  # float inside the network
            assert item['gt'].shape == (1, 32, 32) and item['gt'].dtype == torch.float32
            assert item['gamma'].shape == (1, 32, 32)
            assert set(torch.unique(item['lq']).tolist()) <= {0, 1}
            assert 0.0 <= float(item['gt'].min()) and float(item['gt'].max()) <= 1.0
            assert item['lq_path'] == item['gt_path'] == f's{index}'
            assert 40 <= item['lq_len'] <= 64
            lengths.add(item['lq_len'])
    assert len(lengths) > 3


def test_batches_collate_with_the_default_collate(depth_lmdb):
    random.seed(1)
    loader = DataLoader(SpikeLMDBDataset(_train_opt(depth_lmdb)), batch_size=2, num_workers=0)
    batch = next(iter(loader))
    assert batch['lq'].shape == (2, 64, 32, 32) and batch['gt'].shape == (2, 1, 32, 32)
    assert batch['lq'].dtype == torch.uint8 and batch['gt'].dtype == torch.float32
    assert batch['lq_len'].shape == (2, )


def test_workers_read_the_lmdb(depth_lmdb):
    dataset = SpikeLMDBDataset(_train_opt(depth_lmdb))
    dataset[0]  # opens the environment in this process first: workers must reopen their own
    loader = DataLoader(dataset, batch_size=3, num_workers=2)
    shapes = [tuple(batch['lq'].shape) for batch in loader]
    assert shapes == [(3, 64, 32, 32)]


def test_val_items_are_centred_windows_of_whole_frames(depth_lmdb):
    reader = SpikeLMDBReader(depth_lmdb)
    full, gt = reader.read_sample('s1')
    item = SpikeLMDBDataset({'dataroot': depth_lmdb, 'phase': 'val', 'val_len': 40})[1]
    center = STEPS // 2
    np.testing.assert_array_equal(item['lq'].numpy(), full[center - 20:center + 20])
    np.testing.assert_allclose(item['gt'][0].numpy(), gt / 255.0, atol=1e-7)
    assert item['lq_len'] == 40
    long_item = SpikeLMDBDataset({'dataroot': depth_lmdb, 'phase': 'val'})[1]  # default 192 > 96: whole stream
    assert long_item['lq'].shape == (STEPS, SIZE, SIZE + 8) and long_item['lq_len'] == STEPS


def test_train_window_without_shift_is_centred(depth_lmdb):
    random.seed(2)
    full, gt = SpikeLMDBReader(depth_lmdb).read_sample('s2')
    dataset = SpikeLMDBDataset(_train_opt(depth_lmdb, gt_size=None, use_flip=False, use_rot=False,
                                          temporal_shift=False))
    item = dataset[2]
    np.testing.assert_array_equal(item['lq'].numpy(), full[STEPS // 2 - 32:STEPS // 2 + 32])
    np.testing.assert_allclose(item['gt'][0].numpy(), gt / 255.0, atol=1e-7)


def test_same_python_seed_same_item(depth_lmdb):
    dataset = SpikeLMDBDataset(_train_opt(depth_lmdb))
    random.seed(7)
    first = dataset[0]
    random.seed(7)
    again = dataset[0]
    other = dataset[0]
    assert torch.equal(first['lq'], again['lq']) and torch.equal(first['gt'], again['gt'])
    assert not torch.equal(first['gt'], other['gt'])


def _mae(a, b):
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).mean())


def test_augmentation_is_identical_for_spikes_gt_and_gamma(sharp_lmdb, depth_lmdb):
    random.seed(3)
    dataset = SpikeLMDBDataset(_train_opt(sharp_lmdb))
    items = [dataset[i % 2] for i in range(16)]
    for i, item in enumerate(items):
        reconstructed = _display_from_spikes(item, threshold=1.0)
        matched = _mae(reconstructed, item['gt'][0])
        mismatched = _mae(reconstructed, items[(i + 1) % len(items)]['gt'][0])
        flipped = _mae(reconstructed, item['gt'][0].flip(-1)) if item['gt'].ne(item['gt'].flip(-1)).any() else 1.0
        assert matched < 0.05, matched
        assert mismatched > 3 * matched and flipped > 2 * matched
    # gamma gets the same crop and flips as gt: locate both crops in the full maps under each of the 8 symmetries
    random.seed(4)
    gamma_full = SpikeLMDBDataset({'dataroot': depth_lmdb, 'phase': 'val', 'fpn': True}).gamma
    _, gt_full = SpikeLMDBReader(depth_lmdb).read_sample('s0')
    for _ in range(4):
        item = SpikeLMDBDataset(_train_opt(depth_lmdb, fpn=True))[0]
        gt_pose = _best_pose(gt_full.astype(np.float32) / 255, item['gt'][0].numpy())
        gamma_pose = _best_pose(gamma_full, item['gamma'][0].numpy())
        assert gt_pose[0] < 1e-6 and gamma_pose[0] < 1e-3
        assert gt_pose[1:] == gamma_pose[1:]


def _best_pose(full, crop):
    """(residual, symmetry, location) of the best placement of ``crop`` in ``full`` over the 8 flips/rotations."""
    poses = []
    for transpose in (False, True):
        for k in range(4):
            view = np.rot90(crop.T if transpose else crop, k)
            scores = cv2.matchTemplate(full.astype(np.float32), np.ascontiguousarray(view, np.float32),
                                       cv2.TM_SQDIFF)
            residual, _, location, _ = cv2.minMaxLoc(scores)
            poses.append((residual / crop.size, (transpose, k), location))
    return min(poses)


def test_lmdb_dataset_errors(depth_lmdb, tmp_path):
    with pytest.raises(ValueError, match=r"temporal_len max 200 exceeds the 96 frames of sample 's0'"):
        SpikeLMDBDataset(_train_opt(depth_lmdb, temporal_len=[100, 200]))
    with pytest.raises(ValueError, match=r"sample 's0' is 48x56 \(HxW\), smaller than gt_size=64"):
        SpikeLMDBDataset(_train_opt(depth_lmdb, gt_size=64))[0]
    with pytest.raises(ValueError, match='io_backend type must be "lmdb", got \'disk\''):
        SpikeLMDBDataset(_train_opt(depth_lmdb, io_backend={'type': 'disk'}))
    with pytest.raises(KeyError, match='needs option "dataroot"'):
        SpikeLMDBDataset({'phase': 'train'})
    with pytest.raises(ValueError, match=r'temporal_len must be \[min, max\]'):
        SpikeLMDBDataset(_train_opt(depth_lmdb, temporal_len=[50, 10]))
    wrong = tmp_path / 'wrong_fpn.npz'
    np.savez(wrong, gamma=np.ones((10, 10), np.float32))
    with pytest.raises(ValueError, match=r"FPN gamma .*wrong_fpn.npz is 10x10 but sample 's0' of .* is 48x56"):
        SpikeLMDBDataset(_train_opt(depth_lmdb, fpn=str(wrong)))[0]


# ----------------------------------------------------------------------------------------------------------------------
# SimulatedSpikeDataset


@pytest.fixture(scope='module')
def image_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp('images')
    for folder in ('sharp', 'depth', 'DPDD/train_c/source', 'DPDD/train_c/target'):
        (root / folder).mkdir(parents=True)
    for i in range(2):
        intensity, depth = generate_scene(SIZE, SIZE + 8, 50 + i)
        display16 = (np.power(intensity, 1 / 2.2) * 65535).astype(np.uint16)
        cv2.imwrite(str(root / 'sharp' / f'img{i}.png'), display16)
        np.save(root / 'depth' / f'img{i}.npy', depth)
        cv2.imwrite(str(root / 'DPDD/train_c/target' / f't{i}.png'), display16)
        cv2.imwrite(str(root / 'DPDD/train_c/source' / f'x{i}.png'), cv2.GaussianBlur(display16, (0, 0), 1.5))
    return root


def _sim_opt(root, **extra):
    opt = {'type': 'SimulatedSpikeDataset', 'name': 'sim', 'dataroot_gt': str(root / 'sharp'), 'phase': 'train',
           'gt_size': 32, 'temporal_len': [40, 64], 'use_flip': True, 'use_rot': True}
    opt.update(extra)
    return opt


@pytest.mark.parametrize('sources', ['thinlens', 'depth', 'dpdd'])
def test_simulated_items_have_contract_shapes(image_folder, sources):
    extra = {'depth': {'dataroot_depth': str(image_folder / 'depth')},
             'dpdd': {'dpdd_root': str(image_folder / 'DPDD'), 'split': 'train', 'dataroot_gt': None},
             'thinlens': {}}[sources]
    random.seed(0)
    dataset = build_dataset(_sim_opt(image_folder, return_gamma=True, **extra))
    assert isinstance(dataset, SimulatedSpikeDataset) and dataset.config.mode == sources and len(dataset) == 2
    item = dataset[1]
    assert item['lq'].shape == (64, 32, 32) and item['gt'].shape == (1, 32, 32) and item['gamma'].shape == (1, 32, 32)
    assert item['lq'].dtype == torch.uint8 and set(torch.unique(item['lq']).tolist()) <= {0, 1}
    assert 40 <= item['lq_len'] <= 64 and item['lq_path'].startswith('0001_')
    val = SimulatedSpikeDataset(_sim_opt(image_folder, phase='val', val_len=24, **extra))[0]
    assert val['lq'].shape == (24, SIZE, SIZE + 8) and val['lq_len'] == 24


def test_simulated_draws_differ_and_eval_is_fixed(image_folder):
    random.seed(5)
    dataset = SimulatedSpikeDataset(_sim_opt(image_folder, gt_size=None, use_flip=False, use_rot=False,
                                             sigma_range=[2.0, 2.0], return_gamma=True))
    first, second = dataset[0], dataset[0]
    assert torch.equal(first['gt'], second['gt'])  # same whole frame, no augmentation...
    assert not torch.equal(first['lq'], second['lq'])  # ...but new noise, spike phase
    assert not torch.equal(first['gamma'], second['gamma'])  # ...and a new FPN pattern
    assert 0.03 < float(first['gamma'].std()) < 0.09  # 1 / gain with gain ~ N(1, 0.058)
    val = SimulatedSpikeDataset(_sim_opt(image_folder, phase='val', val_len=16))
    assert torch.equal(val[1]['lq'], val[1]['lq'])


def test_simulated_augmentation_consistency(image_folder):
    random.seed(6)
    dataset = SimulatedSpikeDataset(_sim_opt(image_folder, sigma_range=[0.0, 0.0], gain_std=0.0, threshold=1.0))
    items = [dataset[i % 2] for i in range(12)]
    for i, item in enumerate(items):
        reconstructed = _display_from_spikes(item, threshold=1.0)
        matched = _mae(reconstructed, item['gt'][0])
        assert matched < 0.05
        assert _mae(reconstructed, items[(i + 1) % len(items)]['gt'][0]) > 3 * matched


def test_simulated_dataset_errors(image_folder, tmp_path):
    with pytest.raises(KeyError, match='needs option "dataroot_gt"'):
        SimulatedSpikeDataset({'phase': 'train'})
    (tmp_path / 'two').mkdir()
    for i in range(3):
        np.save(tmp_path / 'two' / f'{i}.npy', np.ones((4, 4), np.float32))
    with pytest.raises(prep.PairingError, match=r'two has 3 images but .*sharp has 2'):
        SimulatedSpikeDataset(_sim_opt(image_folder, dataroot_depth=str(tmp_path / 'two')))
    with pytest.raises(ValueError, match='mode depth needs depth maps'):
        SimulatedSpikeDataset(_sim_opt(image_folder, mode='depth'))
