"""Image transforms of the paper (docs/paper.md section 4.1), on ``H x W x 3`` uint8 RGB arrays.

Train: resize the shorter side to 256, random crop 224, ColorJitter(0.5, 0.5, 0.5, 0.2),
ImageNet normalisation. Test: resize 256, centre crop 224, normalisation: exactly
``mspr_ros.preprocess`` (what the deployed Localizer runs), so training-time validation and
deployment see the same pixels.

Random transforms draw from torch's global CPU generator; :class:`SeededDraws` runs them under a
per-draw seed so that augmentation depends only on (seed, epoch, position in the epoch): the same
in every DataLoader worker layout, after a resume, and across data-parallel processes.
"""
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2

from mspr_ros.preprocess import preprocess_image, PreprocessingConfig
from mspr_training.config import AugmentationConfig

ImageTransform = Callable[[np.ndarray], torch.Tensor]


class EvalTransform:
    """The evaluation transform: ``H x W x 3`` uint8 -> ``3 x crop x crop`` float32."""

    def __init__(self, preprocessing: PreprocessingConfig) -> None:
        """Use ``preprocessing`` (resize, crop, mean, std)."""
        self.preprocessing = preprocessing

    def __call__(self, rgb: np.ndarray) -> torch.Tensor:
        """Return the normalised centre crop."""
        return preprocess_image(rgb, self.preprocessing)


def eval_transform(cfg: AugmentationConfig) -> EvalTransform:
    """Return the paper's test transform with the sizes and statistics of ``cfg``."""
    return EvalTransform(cfg.preprocessing())


def train_transform(cfg: AugmentationConfig) -> ImageTransform:
    """Return the training transform: augmented when ``cfg.enabled``, else the eval one."""
    if not cfg.enabled:
        return eval_transform(cfg)
    return v2.Compose([
        v2.ToImage(),
        v2.Resize(cfg.resize, interpolation=InterpolationMode.BILINEAR, antialias=True),
        v2.RandomCrop(cfg.crop),
        v2.ColorJitter(brightness=cfg.brightness, contrast=cfg.contrast,
                       saturation=cfg.saturation, hue=cfg.hue),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(list(cfg.mean), list(cfg.std)),
    ])


class SeededDraws(Dataset):
    """Wraps a dataset of raw images; items are addressed by ``(index, draw_seed)``.

    The samplers of :mod:`mspr_training.sampler` yield such pairs. The transform runs with
    torch's CPU generator seeded by ``draw_seed`` (and restored afterwards), so a random crop or
    jitter never depends on which process or worker loads the image.
    """

    def __init__(self, base: Dataset, transform: ImageTransform) -> None:
        """Wrap ``base`` whose items hold an ``image`` H x W x 3 uint8 array (no transform)."""
        self.base = base
        self.transform = transform

    def __len__(self) -> int:
        """Return the number of underlying items."""
        return len(self.base)

    def __getitem__(self, draw: Any) -> dict[str, Any]:
        """Return the base item with ``image`` transformed (``3 x crop x crop`` float32)."""
        index, seed = _split_draw(draw)
        item = dict(self.base[index])
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            item['image'] = self.transform(item['image'])
        return item


def _split_draw(draw: Any) -> tuple[int, int]:
    """Return ``(index, seed)`` from a sampler draw (a bare index gets seed = index)."""
    if isinstance(draw, (tuple, list)):
        index, seed = draw
        return int(index), int(seed)
    return int(draw), int(draw)
