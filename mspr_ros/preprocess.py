"""Evaluation preprocessing: shorter side to ``resize``, centre crop ``crop``, ImageNet norm.

This is the paper's test transform (docs/paper.md section 4.1) applied to ``H x W x 3`` uint8
RGB arrays of any size, using torchvision.transforms.v2 functional ops. With a camera
reprojection (``mspr_ros.camera.reprojection``) the image is instead remapped straight into the
training camera at the crop size, then normalised alike.
"""
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class PreprocessingConfig:
    """Input geometry and normalisation the model was trained with."""

    resize: int = 256
    crop: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        """Validate sizes and statistics; raise ValueError naming the field."""
        for name in ('resize', 'crop'):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f'preprocessing {name} must be a positive integer, got {value!r}')
        if self.crop > self.resize:
            raise ValueError(f'preprocessing crop ({self.crop}) must not exceed resize '
                             f'({self.resize})')
        for name in ('mean', 'std'):
            value = tuple(float(v) for v in getattr(self, name))
            if len(value) != 3:
                raise ValueError(f'preprocessing {name} must have 3 values, got {value}')
            if name == 'std' and min(value) <= 0:
                raise ValueError(f'preprocessing std must be positive, got {value}')
            object.__setattr__(self, name, value)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> 'PreprocessingConfig':
        """Build from :meth:`to_dict` output; unknown keys raise ValueError."""
        if not isinstance(data, Mapping):
            raise ValueError(f'preprocessing must be a mapping, got {type(data).__name__}')
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f'unknown preprocessing keys {unknown}')
        return cls(**data)


def validate_rgb_image(rgb: Any, name: str = 'image') -> None:
    """Raise ValueError unless ``rgb`` is a non-empty ``H x W x 3`` uint8 numpy array."""
    if not isinstance(rgb, np.ndarray):
        raise ValueError(f'{name} must be a numpy array, got {type(rgb).__name__}')
    if rgb.dtype != np.uint8:
        raise ValueError(f'{name} must have dtype uint8, got {rgb.dtype}')
    if rgb.ndim != 3:
        raise ValueError(f'{name} must have 3 dimensions (H x W x 3), got shape {rgb.shape}')
    if rgb.shape[2] != 3:
        raise ValueError(f'{name} must have 3 channels (RGB), got shape {rgb.shape}')
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ValueError(f'{name} is empty, shape {rgb.shape}')


def preprocess_image(rgb: np.ndarray,
                     cfg: PreprocessingConfig = PreprocessingConfig(),
                     reprojection: Any = None) -> torch.Tensor:
    """Turn an ``H x W x 3`` uint8 RGB array into a normalised ``3 x crop x crop`` float tensor.

    ``reprojection``: a ``Reprojection`` into the training camera at the crop size; it replaces
    the resize and the crop (ValueError when the image is not its source camera's size).
    """
    validate_rgb_image(rgb)
    if reprojection is not None:
        rgb = reprojection.apply(rgb)
        if rgb.shape[:2] != (cfg.crop, cfg.crop):
            raise ValueError(f'the reprojection gives {rgb.shape[1]} x {rgb.shape[0]} images, '
                             f'the network takes {cfg.crop} x {cfg.crop}')
    # torch.from_numpy cannot wrap negative strides (a BGR->RGB flip view) and warns on the
    # read-only views image_to_rgb returns for zero-copy messages: copy only in those cases.
    if not (rgb.flags.c_contiguous and rgb.flags.writeable):
        rgb = np.array(rgb, order='C')
    image = torch.from_numpy(rgb).permute(2, 0, 1)
    if reprojection is None:
        image = TF.resize(image, [cfg.resize], interpolation=InterpolationMode.BILINEAR,
                          antialias=True)
        image = TF.center_crop(image, [cfg.crop])
    image = TF.to_dtype(image, torch.float32, scale=True)
    return TF.normalize(image, list(cfg.mean), list(cfg.std))


def preprocess_batch(images: Sequence[np.ndarray],
                     cfg: PreprocessingConfig = PreprocessingConfig(),
                     reprojection: Any = None) -> torch.Tensor:
    """Preprocess a non-empty sequence of RGB arrays into ``B x 3 x crop x crop``."""
    if len(images) == 0:
        raise ValueError('preprocess_batch needs at least one image')
    tensors = []
    for index, rgb in enumerate(images):
        try:
            tensors.append(preprocess_image(rgb, cfg, reprojection))
        except ValueError as error:
            raise ValueError(f'image {index}: {error}') from error
    return torch.stack(tensors)
