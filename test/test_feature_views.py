"""Augmented views in the feature cache: light and crop changes without rerunning the backbone."""
import numpy as np
import torch

from mspr_ros.model.ms_transformer import build_model
from mspr_training.config import load_config
from mspr_training.data import load_rgb
from mspr_training.datasets import build_dataset, read_split
from mspr_training.feature_cache import (AugmentedViews, CachedFeatureDataset, load_or_compute,
                                         view_of_draw, view_seed)
from mspr_training.sampler import build_sampler
from mspr_training.train import Trainer
from mspr_training.transforms import eval_transform, train_transform

VIEWS = 3
OVERRIDES = ['model.freeze_backbone=true', 'augmentation.enabled=true',
             f'feature_cache.augmented_views={VIEWS}', 'feature_cache.mode=on']


def test_views_are_seeded_augmentations_and_view_zero_is_the_plain_cache(tiny_world, tmp_path):
    cfg = load_config('tiny_test', OVERRIDES)
    torch.manual_seed(0)
    model = build_model(cfg.model).eval()
    dataset = build_dataset(read_split(cfg.data, 'train', tiny_world))
    test_transform = eval_transform(cfg.augmentation)
    augment = AugmentedViews(train_transform(cfg.augmentation), {'jitter': 0.5}, seed=4)
    cache = load_or_compute(model, dataset, test_transform, torch.device('cpu'), tmp_path,
                            progress=False, views=VIEWS, augment=augment)
    plain = load_or_compute(model, dataset, test_transform, torch.device('cpu'), None,
                            progress=False)
    count = len(dataset)
    assert len(cache) == count and cache.views == VIEWS and cache.feat_t.shape[0] == 3 * count
    torch.testing.assert_close(cache.feat_t[:count], plain.feat_t)
    # View v of image i is the backbone on the training transform drawn with view_seed.
    index, view = 5, 2
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(view_seed(4, view, index))
        image = augment.transform(load_rgb(dataset.samples[index]))
    with torch.no_grad():
        live_t, _ = model.forward_features(image[None])
    torch.testing.assert_close(cache.feat_t[cache.row(index, view)], live_t[0], rtol=1e-4,
                               atol=1e-5)
    first, second = cache.feat_t[cache.row(index, 1)], cache.feat_t[cache.row(index, 2)]
    assert not torch.allclose(first, second) and not torch.allclose(first, plain.feat_t[index])
    # Another augmentation seed is another cache file, never a stale one.
    other = load_or_compute(model, dataset, test_transform, torch.device('cpu'), tmp_path,
                            progress=False, views=VIEWS,
                            augment=AugmentedViews(augment.transform, {'jitter': 0.5}, seed=5))
    assert other.key != cache.key
    assert len(list(tmp_path.glob('features_*.safetensors'))) == 2
    reused = load_or_compute(model, dataset, test_transform, torch.device('cpu'), tmp_path,
                             progress=False, views=VIEWS, augment=augment)
    assert reused.views == VIEWS and torch.equal(reused.feat_rot, cache.feat_rot)


def test_each_draw_picks_a_view_from_its_seed(tiny_world):
    """The view is a function of the draw: epochs differ, a replayed epoch is identical."""
    cfg = load_config('tiny_test', OVERRIDES)
    dataset = build_dataset(read_split(cfg.data, 'train', tiny_world))
    sampler = build_sampler(dataset.scene_of, balanced=True, shuffle=True, seed=0)
    views_by_epoch = []
    for epoch in (0, 1, 0):
        sampler.set_epoch(epoch)
        views_by_epoch.append([view_of_draw(seed, VIEWS) for _, seed in sampler])
    assert views_by_epoch[0] == views_by_epoch[2] and views_by_epoch[0] != views_by_epoch[1]
    counts = np.bincount(views_by_epoch[0] + views_by_epoch[1], minlength=VIEWS)
    assert counts.min() > 0  # every view is used


def test_trainer_caches_views_for_the_frozen_backbone_with_augmentation(tiny_world, tmp_path,
                                                                        isolated_torch):
    cfg = load_config('tiny_test', OVERRIDES + ['schedule.epochs=1'])
    trainer = Trainer(cfg, tmp_path / 'run', str(tiny_world), None)
    assert trainer.uses_feature_cache
    train_set = trainer.train_loader.dataset
    assert isinstance(train_set, CachedFeatureDataset) and train_set.cache.views == VIEWS
    draws = list(trainer.sampler)
    rows = {train_set.cache.row(i, view_of_draw(s, VIEWS)) for i, s in draws}
    item = train_set[draws[0]]
    assert torch.equal(item['feat_t'], train_set.cache.feat_t[
        train_set.cache.row(draws[0][0], view_of_draw(draws[0][1], VIEWS))])
    assert max(rows) >= len(train_set)  # augmented rows are drawn, not only view 0
    result = trainer.fit()
    assert result.global_step > 0
