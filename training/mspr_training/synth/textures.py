"""Surface materials built from the photographs shipped with scikit-image (no download).

``skimage.data`` holds some images only as optional downloads; the names used here are the ones
stored inside the package itself (checked offline with scikit-image 0.26).
"""
from dataclasses import dataclass
import functools

import cv2
import numpy as np
import skimage.data

#: Colour photographs: posters and object faces.
PHOTOS = ('astronaut', 'chelsea', 'coffee', 'colorwheel', 'hubble_deep_field',
          'immunohistochemistry', 'retina', 'rocket')
#: Grey photographs of surfaces and things, tinted per scene: floors, walls, ceilings, pillars.
GREY_SURFACES = ('brick', 'camera', 'cell', 'clock', 'coins', 'grass', 'gravel', 'moon', 'page',
                 'text')
#: Side of the square texture arrays in texels.
TEXTURE_SIZE = 256


@dataclass(frozen=True)
class Material:
    """How a surface is coloured.

    Attributes:
        source: a name from PHOTOS or GREY_SURFACES, or '' for a solid colour.
        tint: RGB multipliers in [0, 1] (the solid colour when ``source`` is '').
        tile_m: side of one texture repeat in metres; None stretches the image once over each
            face (posters).
    """

    source: str
    tint: tuple = (1.0, 1.0, 1.0)
    tile_m: float | None = 1.0

    def texture(self) -> np.ndarray:
        """Return the float32 (TEXTURE_SIZE, TEXTURE_SIZE, 3) texture with values 0..255."""
        return _texture(self.source, tuple(float(c) for c in self.tint))


@functools.lru_cache(maxsize=64)
def _texture(source, tint):
    """Load, resize, smooth and tint a texture once per (source, tint)."""
    if source == '':
        return np.broadcast_to(np.asarray(tint, np.float32) * 255.0,
                               (TEXTURE_SIZE, TEXTURE_SIZE, 3))
    if source not in PHOTOS + GREY_SURFACES:
        raise ValueError(f'unknown texture source {source!r}')
    image = np.asarray(getattr(skimage.data, source)())
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    image = image[:, :, :3].astype(np.float32)
    # INTER_AREA pre-filters: nearest-texel lookups from a distance then alias less.
    image = cv2.resize(image, (TEXTURE_SIZE, TEXTURE_SIZE), interpolation=cv2.INTER_AREA)
    image = cv2.GaussianBlur(image, (0, 0), 0.7)
    texture = np.clip(image * np.asarray(tint, np.float32), 0.0, 255.0).astype(np.float32)
    texture.setflags(write=False)
    return texture
