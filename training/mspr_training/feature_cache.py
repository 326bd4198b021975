"""Cached backbone maps: run a frozen backbone once per image, then train from its maps.

Valid only when the backbone is frozen (eval mode, no gradient) and the training transform is
deterministic (no augmentation): then ``model.forward_features(image)`` is the same tensor every
epoch, and ``model.forward_from_features`` on the cached maps equals the full forward pass.
On two CPU cores this turns a backbone-bound epoch into a transformer-bound one
(docs/environment.md: ~50 ms per image once, then ~11 s per epoch of 1200 images).

The cache key hashes everything the maps depend on: every image's bytes (file content, or the
pixels of in-memory bag images) in dataset order, the backbone's name, tensors and pooling, and
the preprocessing. The optional on-disk copy is a ``.safetensors`` file named by that key, so a
later run on the same data and backbone reuses it and any change recomputes it.
"""
from __future__ import annotations

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
CACHE_FORMAT = 1
_METADATA_KEY = 'mspr_feature_cache'


def _image_digest(sample: Any) -> bytes:
    """Return the sha256 of a sample's image file bytes, or of its in-memory pixels."""
    if sample.image is not None:
        pixels = np.ascontiguousarray(sample.image)
        return hashlib.sha256(repr(pixels.shape).encode() + pixels.tobytes()).digest()
    return hashlib.sha256(Path(sample.image_path).read_bytes()).digest()


def cache_key(model: nn.Module, dataset: MultiSceneDataset,
              preprocessing: PreprocessingConfig) -> str:
    """Return the hex sha256 identifying the cached maps of ``dataset`` under ``model``."""
    digest = hashlib.sha256()
    config = model.config
    digest.update(json.dumps({'format': CACHE_FORMAT, 'backbone': config.backbone,
                              'feature_pool': config.feature_pool,
                              'preprocessing': preprocessing.to_dict()},
                             sort_keys=True).encode())
    for name, tensor in sorted(model.backbone.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    for sample in dataset.samples:
        digest.update(_image_digest(sample))
    return digest.hexdigest()


@torch.inference_mode()
def compute_features(model: nn.Module, dataset: MultiSceneDataset, transform: EvalTransform,
                     device: torch.device, batch_size: int = 32, num_workers: int = 0,
                     progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the maps of every dataset item, in dataset order, on the CPU in float32.

    Returns:
        ``(feat_t N x 112 x Ht x Wt, feat_rot N x 40 x Hr x Wr)`` as ``forward_features``.
    """
    was_training = model.training
    model.eval()
    loader = DataLoader(SeededDraws(dataset, transform), batch_size=batch_size,
                        num_workers=num_workers, shuffle=False)
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
    """The maps of every item of a dataset (``feat_t N x ...``, ``feat_rot N x ...``)."""

    def __init__(self, feat_t: torch.Tensor, feat_rot: torch.Tensor, key: str) -> None:
        """Hold maps computed for the dataset identified by ``key``."""
        if feat_t.shape[0] != feat_rot.shape[0]:
            raise ValueError(f'{feat_t.shape[0]} position maps for {feat_rot.shape[0]} '
                             'orientation maps')
        self.feat_t = feat_t
        self.feat_rot = feat_rot
        self.key = key

    def __len__(self) -> int:
        """Return the number of cached items."""
        return self.feat_t.shape[0]

    def save(self, path: str | Path) -> Path:
        """Write the cache as ``.safetensors`` with its key in the metadata (atomically)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp_path = path.with_name(f'.{path.name}.tmp')
        safetensors.torch.save_file(
            {'feat_t': self.feat_t.contiguous(), 'feat_rot': self.feat_rot.contiguous()},
            str(tmp_path), metadata={_METADATA_KEY: self.key})
        tmp_path.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path, key: str, count: int) -> 'FeatureCache | None':
        """Return the cache stored at ``path`` if it has ``key`` and ``count`` items, else None."""
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
        if feat_t.shape[0] != count or feat_rot.shape[0] != count:
            LOGGER.warning('%s: feature cache holds %d items, dataset has %d; recomputing',
                           path, feat_t.shape[0], count)
            return None
        return cls(feat_t, feat_rot, key)


def cache_path(directory: str | Path, key: str) -> Path:
    """Return the on-disk cache file for ``key`` in ``directory``."""
    return Path(directory) / f'features_{key[:16]}.safetensors'


def load_or_compute(model: nn.Module, dataset: MultiSceneDataset, transform: EvalTransform,
                    device: torch.device, directory: str | Path | None, *,
                    compute: bool = True, batch_size: int = 32, num_workers: int = 0,
                    progress: bool = True) -> FeatureCache | None:
    """Return the dataset's cache: from ``directory`` when present and valid, else computed.

    Args:
        compute: compute (and save) when no valid file exists; with False return None then
            (a data-parallel rank waiting for rank 0's file).
    """
    key = cache_key(model, dataset, transform.preprocessing)
    path = cache_path(directory, key) if directory is not None else None
    if path is not None:
        cache = FeatureCache.load(path, key, len(dataset))
        if cache is not None:
            LOGGER.info('reusing cached backbone maps %s', path)
            return cache
    if not compute:
        return None
    feat_t, feat_rot = compute_features(model, dataset, transform, device, batch_size,
                                        num_workers, progress)
    cache = FeatureCache(feat_t, feat_rot, key)
    if path is not None:
        cache.save(path)
        LOGGER.info('cached backbone maps of %d images in %s', len(cache), path)
    return cache


class CachedFeatureDataset(Dataset):
    """Training items from cached maps, addressed by sampler draws ``(index, seed)``.

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
        """Return the item of a draw (the draw seed is unused: nothing here is random)."""
        index = int(draw[0]) if isinstance(draw, (tuple, list)) else int(draw)
        return {'feat_t': self.cache.feat_t[index], 'feat_rot': self.cache.feat_rot[index],
                'position': self.positions[index], 'orientation': self.orientations[index],
                'scene': self.scenes[index], 'index': index}
