"""Cached backbone maps: run a frozen backbone once per image view, then train from its maps.

Valid only when the backbone is frozen (eval mode, no gradient): then
``model.forward_features(image)`` is a fixed function of the image, and
``model.forward_from_features`` on the cached maps equals the full forward pass.
On two CPU cores this turns a backbone-bound epoch into a transformer-bound one
(docs/environment.md: ~50 ms per image once, then ~11 s per epoch of 1200 images).

Augmentation without recomputing the backbone: with ``views`` K > 1 the cache holds K maps per
image: view 0 under the test transform, views 1..K-1 under seeded draws of the training
augmentation (the paper's random crop and ColorJitter). Each training draw picks one view from
its draw seed (:func:`view_of_draw`), so an epoch sees a different light and crop per image and
the choice is a function of (seed, epoch, position): resume stays exact. Rows are view-major:
row ``v * N + i`` is view v of image i (view 0 is rows 0..N-1, the plain cache).

The cache key hashes everything the maps depend on: every image's bytes (file content, or the
pixels of in-memory bag images) in dataset order, the backbone's name, tensors and pooling, and
the preprocessing. The optional on-disk copy is a ``.safetensors`` file named by that key, so a
later run on the same data and backbone reuses it and any change recomputes it.
"""
from __future__ import annotations

from dataclasses import dataclass
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from mspr_ros.preprocess import PreprocessingConfig
from mspr_training.data import MultiSceneDataset
from mspr_training.transforms import EvalTransform, SeededDraws

LOGGER = logging.getLogger(__name__)
CACHE_FORMAT = 2
_METADATA_KEY = 'mspr_feature_cache'
_VIEWS_KEY = 'mspr_feature_cache_views'


def view_seed(seed: int, view: int, index: int) -> int:
    """Return the augmentation seed of view ``view`` (>= 1) of image ``index``."""
    return int(np.random.SeedSequence([int(seed), int(view), int(index)]).generate_state(1)[0])


def view_of_draw(draw_seed: int, views: int) -> int:
    """Return the view a sampler draw uses: uniform over the views, fixed by the draw seed."""
    return int(np.random.default_rng([int(draw_seed) & (2 ** 63 - 1), 7]).integers(views))


def _image_digest(sample: Any) -> bytes:
    """Return the sha256 of a sample's image file bytes, or of its in-memory pixels."""
    if sample.image is not None:
        pixels = np.ascontiguousarray(sample.image)
        return hashlib.sha256(repr(pixels.shape).encode() + pixels.tobytes()).digest()
    return hashlib.sha256(Path(sample.image_path).read_bytes()).digest()


def cache_key(model: nn.Module, dataset: MultiSceneDataset,
              preprocessing: PreprocessingConfig, views: int = 1,
              augmentation: dict | None = None, seed: int = 0) -> str:
    """Return the hex sha256 identifying the cached maps of ``dataset`` under ``model``.

    ``augmentation`` (the augmentation section as a dict) and ``seed`` matter only with
    ``views`` > 1.
    """
    digest = hashlib.sha256()
    config = model.config
    described = {'format': CACHE_FORMAT, 'backbone': config.backbone,
                 'feature_pool': config.feature_pool, 'preprocessing': preprocessing.to_dict(),
                 'views': views}
    if views > 1:
        described.update(augmentation=augmentation, seed=seed)
    digest.update(json.dumps(described, sort_keys=True, default=list).encode())
    for name, tensor in sorted(model.backbone.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    for sample in dataset.samples:
        digest.update(_image_digest(sample))
        if getattr(sample, 'source_camera', None) is not None:
            # Reprojected pixels (data.camera: reproject) differ from the stored ones.
            digest.update(json.dumps([sample.source_camera.to_dict(),
                                      sample.camera.to_dict()]).encode())
    return digest.hexdigest()


@torch.inference_mode()
def compute_features(model: nn.Module, dataset: MultiSceneDataset, transform: Any,
                     device: torch.device, batch_size: int = 32, num_workers: int = 0,
                     progress: bool = True, draws: list[tuple[int, int]] | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the maps of every dataset item (or of ``draws``), in order, on the CPU in float32.

    Args:
        transform: image transform (random ones run under each draw's seed).
        draws: ``(index, seed)`` pairs to compute; default every item once, seed = index.

    Returns:
        ``(feat_t N x 112 x Ht x Wt, feat_rot N x 40 x Hr x Wr)`` as ``forward_features``.
    """
    was_training = model.training
    model.eval()
    loader = DataLoader(SeededDraws(dataset, transform), batch_size=batch_size,
                        num_workers=num_workers, shuffle=False,
                        sampler=draws if draws is not None else None)
    parts_t, parts_rot = [], []
    try:
        for batch in tqdm(loader, desc='caching backbone maps', disable=not progress,
                          leave=False):
            feat_t, feat_rot = model.forward_features(batch['image'].to(device))
            parts_t.append(feat_t.float().cpu())
            parts_rot.append(feat_rot.float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(parts_t), torch.cat(parts_rot)


class FeatureCache:
    """The maps of every item of a dataset, ``views`` per item (rows view-major).

    ``feat_t`` is ``(views * N) x ...``; rows ``0..N-1`` are view 0 (the test transform).
    """

    def __init__(self, feat_t: torch.Tensor, feat_rot: torch.Tensor, key: str,
                 views: int = 1) -> None:
        """Hold maps computed for the dataset identified by ``key``."""
        if feat_t.shape[0] != feat_rot.shape[0]:
            raise ValueError(f'{feat_t.shape[0]} position maps for {feat_rot.shape[0]} '
                             'orientation maps')
        if views < 1 or feat_t.shape[0] % views:
            raise ValueError(f'{feat_t.shape[0]} maps are not {views} views of equal count')
        self.feat_t = feat_t
        self.feat_rot = feat_rot
        self.key = key
        self.views = views

    def __len__(self) -> int:
        """Return the number of cached items (images, not views)."""
        return self.feat_t.shape[0] // self.views

    def row(self, index: int, view: int) -> int:
        """Return the row of view ``view`` of item ``index``."""
        return view * len(self) + index

    def save(self, path: str | Path) -> Path:
        """Write the cache as ``.safetensors`` with its key in the metadata (atomically)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp_path = path.with_name(f'.{path.name}.tmp')
        safetensors.torch.save_file(
            {'feat_t': self.feat_t.contiguous(), 'feat_rot': self.feat_rot.contiguous()},
            str(tmp_path), metadata={_METADATA_KEY: self.key, _VIEWS_KEY: str(self.views)})
        tmp_path.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path, key: str, count: int, views: int = 1
             ) -> 'FeatureCache | None':
        """Return the cache at ``path`` if it has ``key`` and ``count`` x ``views`` maps."""
        path = Path(path)
        if not path.is_file():
            return None
        try:
            with safetensors.safe_open(str(path), framework='pt') as handle:
                if (handle.metadata() or {}).get(_METADATA_KEY) != key:
                    return None
                feat_t = handle.get_tensor('feat_t')
                feat_rot = handle.get_tensor('feat_rot')
        except Exception as error:  # a corrupt cache is recomputed, and said so
            LOGGER.warning('%s: unreadable feature cache (%s); recomputing', path, error)
            return None
        if feat_t.shape[0] != count * views or feat_rot.shape[0] != count * views:
            LOGGER.warning('%s: feature cache holds %d maps, dataset has %d x %d views; '
                           'recomputing', path, feat_t.shape[0], count, views)
            return None
        return cls(feat_t, feat_rot, key, views)


def cache_path(directory: str | Path, key: str) -> Path:
    """Return the on-disk cache file for ``key`` in ``directory``."""
    return Path(directory) / f'features_{key[:16]}.safetensors'


def load_or_compute(model: nn.Module, dataset: MultiSceneDataset, transform: EvalTransform,
                    device: torch.device, directory: str | Path | None, *,
                    compute: bool = True, batch_size: int = 32, num_workers: int = 0,
                    progress: bool = True, views: int = 1,
                    augment: AugmentedViews | None = None) -> FeatureCache | None:
    """Return the dataset's cache: from ``directory`` when present and valid, else computed.

    Args:
        transform: the test transform (view 0).
        compute: compute (and save) when no valid file exists; with False return None then
            (a data-parallel rank waiting for rank 0's file).
        views: maps per image; views 1.. need ``augment``.
        augment: the training augmentation and seed of the extra views.
    """
    if views > 1 and augment is None:
        raise ValueError(f'{views} views need the augmentation that draws them')
    key = cache_key(model, dataset, transform.preprocessing, views,
                    augment.description if augment is not None else None,
                    augment.seed if augment is not None else 0)
    path = cache_path(directory, key) if directory is not None else None
    if path is not None:
        cache = FeatureCache.load(path, key, len(dataset), views)
        if cache is not None:
            LOGGER.info('reusing cached backbone maps %s', path)
            return cache
    if not compute:
        return None
    parts = [compute_features(model, dataset, transform, device, batch_size, num_workers,
                              progress)]
    for view in range(1, views):
        draws = [(index, view_seed(augment.seed, view, index)) for index in range(len(dataset))]
        parts.append(compute_features(model, dataset, augment.transform, device, batch_size,
                                      num_workers, progress, draws=draws))
    feat_t = parts[0][0] if views == 1 else torch.cat([part[0] for part in parts])
    feat_rot = parts[0][1] if views == 1 else torch.cat([part[1] for part in parts])
    cache = FeatureCache(feat_t, feat_rot, key, views)
    if path is not None:
        cache.save(path)
        LOGGER.info('cached backbone maps of %d images x %d views in %s', len(cache), views,
                    path)
    return cache


@dataclass
class AugmentedViews:
    """How the extra views of a cache are drawn.

    Attributes:
        transform: the training augmentation (random crop, ColorJitter).
        description: what identifies it in the cache key (the augmentation section).
        seed: base seed of the views' draws.
    """

    transform: Any
    description: dict
    seed: int


class CachedFeatureDataset(Dataset):
    """Training items from cached maps, addressed by sampler draws ``(index, seed)``.

    With several views per image the draw seed picks the view (:func:`view_of_draw`).

    Items: ``feat_t``, ``feat_rot`` (as cached), ``position`` float32 (3,), ``orientation``
    float32 (4,) xyzw, ``scene`` int64 scalar, ``index`` int.
    """

    def __init__(self, cache: FeatureCache, dataset: MultiSceneDataset) -> None:
        """Pair the cache with the dataset it was computed from (same order)."""
        if len(cache) != len(dataset):
            raise ValueError(f'cache has {len(cache)} items, dataset {len(dataset)}')
        self.cache = cache
        self.positions = torch.as_tensor(np.array([s.position for s in dataset.samples]),
                                         dtype=torch.float32)
        self.orientations = torch.as_tensor(np.array([s.orientation for s in dataset.samples]),
                                            dtype=torch.float32)
        self.scenes = torch.as_tensor(dataset.scene_of, dtype=torch.long)

    def __len__(self) -> int:
        """Return the number of items."""
        return len(self.cache)

    def __getitem__(self, draw: Any) -> dict[str, Any]:
        """Return the item of a draw (its seed picks the view when there are several)."""
        index = int(draw[0]) if isinstance(draw, (tuple, list)) else int(draw)
        view = 0
        if self.cache.views > 1:
            seed = int(draw[1]) if isinstance(draw, (tuple, list)) else index
            view = view_of_draw(seed, self.cache.views)
        row = self.cache.row(index, view)
        return {'feat_t': self.cache.feat_t[row], 'feat_rot': self.cache.feat_rot[row],
                'position': self.positions[index], 'orientation': self.orientations[index],
                'scene': self.scenes[index], 'index': index}
