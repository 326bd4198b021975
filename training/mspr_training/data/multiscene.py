"""A torch Dataset over the posed images of several scenes with stable scene indices."""
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from mspr_training.data.samples import load_rgb, PoseSample


class MultiSceneDataset(Dataset):
    """All samples of several scenes, each labelled with its scene index.

    Scene indices follow ``scene_names``: by default the scene names sorted alphabetically (as
    MS-Transformer's ``np.unique``); an explicit list keeps its order (e.g. a weights bundle's)
    and may name scenes without samples, but every scene with samples must be in it.

    Attributes:
        samples: list of PoseSample, scene by scene in ``scene_names`` order.
        scene_names: list of scene names in index order.
        scene_of: int64 (N,) scene index of each item.
        scene_counts: int64 (S,) number of items of each scene.
    """

    def __init__(self, samples_by_scene: Mapping[str, Sequence[PoseSample]],
                 transform: Callable[[np.ndarray], torch.Tensor] | None = None,
                 scene_names: Sequence[str] | None = None):
        """Index ``samples_by_scene``; ``transform`` maps an H x W x 3 uint8 RGB image."""
        if scene_names is None:
            scene_names = sorted(samples_by_scene)
        scene_names = list(scene_names)
        if len(set(scene_names)) != len(scene_names):
            raise ValueError(f'scene_names has duplicates: {scene_names}')
        unknown = sorted(set(samples_by_scene) - set(scene_names))
        if unknown:
            raise ValueError(f'scenes {unknown} are not in scene_names {scene_names}')
        self.transform = transform
        self.scene_names = scene_names
        self.samples = []
        scene_of = []
        for index, name in enumerate(scene_names):
            scene_samples = list(samples_by_scene.get(name, ()))
            self.samples.extend(scene_samples)
            scene_of.extend([index] * len(scene_samples))
        self.scene_of = np.asarray(scene_of, dtype=np.int64)
        self.scene_counts = np.bincount(self.scene_of, minlength=len(scene_names))

    def __len__(self):
        """Return the number of samples over all scenes."""
        return len(self.samples)

    def __getitem__(self, index):
        """Return one item.

        Returns:
            dict with ``image`` (the transform's tensor, or the H x W x 3 uint8 array when no
            transform), ``position`` float32 (3,), ``orientation`` float32 (4,) xyzw, ``scene``
            int64 scalar tensor and ``index`` int.
        """
        sample = self.samples[index]
        rgb = load_rgb(sample)
        return {
            'image': self.transform(rgb) if self.transform is not None else rgb,
            'position': torch.as_tensor(sample.position, dtype=torch.float32),
            'orientation': torch.as_tensor(sample.orientation, dtype=torch.float32),
            'scene': torch.tensor(self.scene_of[index], dtype=torch.long),
            'index': int(index),
        }

    @classmethod
    def from_samples(cls, samples: Sequence[PoseSample], transform=None, scene_names=None):
        """Build from a flat sample list, grouping by ``sample.scene`` (order kept per scene)."""
        grouped = {}
        for sample in samples:
            grouped.setdefault(sample.scene, []).append(sample)
        return cls(grouped, transform, scene_names)
