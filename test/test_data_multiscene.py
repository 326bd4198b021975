"""MultiSceneDataset: stable scene indices, item contents, transforms and loader batching."""
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from mspr_training.data import MultiSceneDataset, PoseSample


def sample(scene, value, position=(1.0, 2.0, 3.0)):
    """Return a sample holding a 2 x 3 image filled with ``value``."""
    return PoseSample(scene, 'seq', np.asarray(position, dtype=np.float64),
                      np.array([0.0, 0.0, 0.6, 0.8]), image=np.full((2, 3, 3), value, np.uint8))


SAMPLES = {'office': [sample('office', 1), sample('office', 2)],
           'chess': [sample('chess', 3)],
           'stairs': [sample('stairs', 4), sample('stairs', 5), sample('stairs', 6)]}


def test_default_scene_order_is_alphabetical_like_np_unique():
    dataset = MultiSceneDataset(SAMPLES, transform=None)
    assert dataset.scene_names == list(np.unique(list(SAMPLES))) == ['chess', 'office', 'stairs']
    assert dataset.scene_of.tolist() == [0, 1, 1, 2, 2, 2]
    assert dataset.scene_counts.tolist() == [1, 2, 3]
    assert len(dataset) == 6
    assert [int(dataset[i]['image'][0, 0, 0]) for i in range(6)] == [3, 1, 2, 4, 5, 6]


def test_explicit_scene_names_keep_their_order_and_may_name_empty_scenes():
    dataset = MultiSceneDataset(SAMPLES, None, scene_names=['stairs', 'heads', 'office', 'chess'])
    assert dataset.scene_names == ['stairs', 'heads', 'office', 'chess']
    assert dataset.scene_counts.tolist() == [3, 0, 2, 1]
    assert int(dataset[3]['scene']) == 2 and int(dataset[5]['scene']) == 3
    with pytest.raises(ValueError, match=r"scenes \['chess'\] are not in scene_names"):
        MultiSceneDataset(SAMPLES, None, scene_names=['stairs', 'office'])
    with pytest.raises(ValueError, match='duplicates'):
        MultiSceneDataset(SAMPLES, None, scene_names=['stairs', 'office', 'chess', 'office'])


def test_items_carry_typed_pose_scene_and_index():
    dataset = MultiSceneDataset(SAMPLES, transform=None)
    item = dataset[4]
    assert item['position'].dtype == torch.float32 and item['position'].shape == (3,)
    assert item['orientation'].dtype == torch.float32
    torch.testing.assert_close(item['orientation'], torch.tensor([0.0, 0.0, 0.6, 0.8]))
    assert item['scene'].dtype == torch.long and item['scene'].ndim == 0
    assert item['index'] == 4
    assert item['image'].dtype == np.uint8 and item['image'].shape == (2, 3, 3)


def test_transform_is_applied_and_batches_collate():
    def to_tensor(rgb):
        return torch.from_numpy(rgb).permute(2, 0, 1).float() / 255.0

    dataset = MultiSceneDataset.from_samples(
        [s for scene in SAMPLES.values() for s in scene], transform=to_tensor)
    batch = next(iter(DataLoader(dataset, batch_size=6)))
    assert batch['image'].shape == (6, 3, 2, 3)
    assert batch['scene'].tolist() == [0, 1, 1, 2, 2, 2]
    torch.testing.assert_close(batch['image'][0, :, 0, 0], torch.full((3,), 3 / 255.0))
    assert batch['position'].shape == (6, 3) and batch['index'].tolist() == list(range(6))
