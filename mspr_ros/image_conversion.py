"""Convert ROS image message fields to and from RGB arrays (ROS-free; replaces cv_bridge).

``sensor_msgs/Image`` encodings understood by ``image_to_rgb`` (``SUPPORTED_ENCODINGS``):

============ ======== ===== ==========================================================
encoding     channels bytes to RGB
============ ======== ===== ==========================================================
rgb8         3        1     as is
bgr8         3        1     channels reversed
rgba8        4        1     alpha dropped
bgra8        4        1     alpha dropped, channels reversed
mono8        1        1     copied into R, G and B
8UC1         1        1     as mono8 (cv_bridge does the same)
8UC3         3        1     as bgr8 (OpenCV's channel order, as cv_bridge assumes)
mono16       1        2     top byte (value >> 8) into R, G and B
16UC1        1        2     as mono16
rgb16        3        2     top byte of each channel
bgr16        3        2     top byte of each channel, channels reversed
============ ======== ===== ==========================================================

16-bit data is reduced to 8 bits by keeping the high byte (``>> 8``): it maps the full 16-bit
range linearly onto 0..255, which is what a camera streaming 16-bit colour means. (Depth-like
16UC1 data in millimetres would come out dark; the network is trained on 8-bit photos either way.)
Multi-byte samples honour ``is_bigendian``.

``decode_compressed`` handles ``sensor_msgs/CompressedImage`` payloads (JPEG or PNG) with OpenCV.
"""
from __future__ import annotations

import array
import dataclasses
import io
from typing import Any

import cv2
import numpy as np
from PIL import Image as PilImage

DEFAULT_MAX_PIXELS = 16_777_216  # 4096 x 4096


@dataclasses.dataclass(frozen=True)
class _Encoding:
    channels: int
    bytes_per_channel: int
    # Indices of the source channels that give R, G, B.
    rgb_channels: tuple[int, int, int]


_ENCODINGS = {
    'rgb8': _Encoding(3, 1, (0, 1, 2)),
    'bgr8': _Encoding(3, 1, (2, 1, 0)),
    'rgba8': _Encoding(4, 1, (0, 1, 2)),
    'bgra8': _Encoding(4, 1, (2, 1, 0)),
    'mono8': _Encoding(1, 1, (0, 0, 0)),
    'mono16': _Encoding(1, 2, (0, 0, 0)),
    'rgb16': _Encoding(3, 2, (0, 1, 2)),
    'bgr16': _Encoding(3, 2, (2, 1, 0)),
    '16UC1': _Encoding(1, 2, (0, 0, 0)),
    '8UC1': _Encoding(1, 1, (0, 0, 0)),
    '8UC3': _Encoding(3, 1, (2, 1, 0)),
}
SUPPORTED_ENCODINGS = tuple(_ENCODINGS)
# What rgb_to_image_fields writes.
OUTPUT_ENCODINGS = ('rgb8', 'bgr8', 'mono8', 'rgba8', 'bgra8')
COMPRESSED_FORMATS = ('jpeg', 'png')

_JPEG_MAGIC = b'\xff\xd8\xff'
_JPEG_END_OF_IMAGE = b'\xff\xd9'
_PNG_MAGIC = b'\x89PNG\r\n\x1a\n'

ImageData = bytes | bytearray | memoryview | array.array | np.ndarray


class ImageConversionError(ValueError):
    """An image message that cannot be converted; the message says why, with the numbers."""


@dataclasses.dataclass(frozen=True)
class ImageFields:
    """The fields of a ``sensor_msgs/Image`` (``is_bigendian`` is always 0 for these encodings)."""

    height: int
    width: int
    encoding: str
    step: int
    data: bytes


def _byte_view(data: ImageData) -> np.ndarray:
    """View any buffer (bytes, bytearray, memoryview, array.array, ndarray) as flat uint8."""
    if isinstance(data, (str, list, tuple)):
        raise ImageConversionError(f'image data must be a bytes-like buffer, got '
                                   f'{type(data).__name__}')
    try:
        return np.frombuffer(data, dtype=np.uint8)
    except (TypeError, ValueError, BufferError) as error:
        raise ImageConversionError(f'image data must be a contiguous bytes-like buffer, got '
                                   f'{type(data).__name__}: {error}') from error


def _dimension(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ImageConversionError(f'image {name} must be an integer, got {value!r}')
    return int(value)


def _check_size(height: int, width: int, max_pixels: int) -> None:
    if height <= 0 or width <= 0:
        raise ImageConversionError(f'image is empty or negative: height {height}, width {width}')
    if height * width > max_pixels:
        raise ImageConversionError(f'image of {width}x{height} = {height * width} pixels exceeds '
                                   f'max_pixels {max_pixels}')


def image_to_rgb(height: int, width: int, encoding: str, step: int, data: ImageData,
                 is_bigendian: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Convert the fields of a ``sensor_msgs/Image`` to an RGB array.

    Args:
        height, width: pixels.
        encoding: one of ``SUPPORTED_ENCODINGS`` (case-sensitive, as in ROS).
        step: bytes per row, at least ``width * channels * bytes_per_channel`` (row padding is
            skipped).
        data: exactly ``height * step`` bytes, as ``sensor_msgs/Image`` defines it (fewer or
            more means the fields disagree and is refused). ``bytes``, ``bytearray``,
            ``memoryview`` or ``array.array`` (what rclpy delivers) are viewed without a copy.
        is_bigendian: byte order of 16-bit samples.
        max_pixels: larger images are refused before the data is touched.

    Returns:
        shape (height, width, 3) uint8 RGB, C-contiguous. For ``rgb8`` without row padding it
        is a read-only view of ``data`` (no copy); copy it before writing to it.

    Raises:
        ImageConversionError: naming the problem and the numbers.
    """
    height = _dimension(height, 'height')
    width = _dimension(width, 'width')
    step = _dimension(step, 'step')
    spec = _ENCODINGS.get(encoding)
    if spec is None:
        raise ImageConversionError(f'unsupported image encoding {encoding!r}; supported: '
                                   f'{", ".join(SUPPORTED_ENCODINGS)}')
    _check_size(height, width, max_pixels)
    row_bytes = width * spec.channels * spec.bytes_per_channel
    if step < row_bytes:
        raise ImageConversionError(
            f'step {step} is smaller than width {width} x {spec.channels} channels x '
            f'{spec.bytes_per_channel} bytes = {row_bytes} for encoding {encoding!r}')
    flat = _byte_view(data)
    if flat.size != height * step:
        raise ImageConversionError(f'image data has {flat.size} bytes, expected height {height} '
                                   f'x step {step} = {height * step}')
    rows = flat.reshape(height, step)[:, :row_bytes]
    if spec.bytes_per_channel == 2:
        samples = rows.view('>u2' if is_bigendian else '<u2')
        pixels = (samples >> 8).astype(np.uint8).reshape(height, width, spec.channels)
    else:
        pixels = rows.reshape(height, width, spec.channels)
        if encoding == 'rgb8' and pixels.flags.c_contiguous:
            # Zero-copy: the caller's buffer, protected against writes through this view.
            view = pixels.view()
            view.setflags(write=False)
            return view
    if spec.rgb_channels == (0, 1, 2) and spec.channels == 3:
        return np.ascontiguousarray(pixels)
    if spec.channels == 1:
        return np.ascontiguousarray(np.repeat(pixels, 3, axis=2))
    return np.ascontiguousarray(pixels[:, :, list(spec.rgb_channels)])


def _compressed_size(payload: bytes) -> tuple[int, int]:
    """Return (width, height) from a JPEG or PNG header without decoding the pixels."""
    try:
        with PilImage.open(io.BytesIO(payload)) as header:
            return header.size
    except (OSError, SyntaxError, ValueError, PilImage.DecompressionBombError) as error:
        raise ImageConversionError(f'compressed image header is corrupt: {error}') from error


def decode_compressed(data: ImageData, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode a JPEG or PNG payload (``sensor_msgs/CompressedImage.data``) to RGB.

    The header is read first (Pillow) and images over ``max_pixels`` are refused before
    decoding, so a small file that claims a huge size cannot exhaust memory. Decoding uses
    ``cv2.imdecode(IMREAD_UNCHANGED)`` (no EXIF rotation, like cv_bridge): grey becomes three
    equal channels, alpha is dropped, 16-bit PNG keeps its high byte.

    A JPEG without its end-of-image marker is refused: depending on the OpenCV build a truncated
    JPEG either fails or decodes with the missing rows filled grey and only a warning, and half an
    image gives a confident wrong pose. Corruption inside a complete JPEG that libjpeg decodes with
    a warning cannot be detected here and is passed on.

    Returns:
        shape (H, W, 3) uint8 RGB, C-contiguous.

    Raises:
        ImageConversionError: empty, not JPEG/PNG, corrupt or truncated data, or too many pixels.
    """
    flat = _byte_view(data)
    if flat.size == 0:
        raise ImageConversionError('compressed image data is empty')
    payload = flat.tobytes()
    head = payload[:8]
    if head.startswith(_JPEG_MAGIC):
        kind = 'JPEG'
        # Some encoders pad after the marker; zero padding is harmless.
        if not payload.rstrip(b'\x00').endswith(_JPEG_END_OF_IMAGE):
            raise ImageConversionError(f'JPEG data of {flat.size} bytes is truncated: no '
                                       'end-of-image marker (FF D9) at its end')
    elif head == _PNG_MAGIC:
        kind = 'PNG'
    else:
        raise ImageConversionError(f'compressed image is neither JPEG nor PNG (first bytes '
                                   f'{head.hex(" ")})')
    width, height = _compressed_size(payload)
    _check_size(height, width, max_pixels)
    decoded = cv2.imdecode(flat, cv2.IMREAD_UNCHANGED)
    if decoded is None or decoded.size == 0:
        raise ImageConversionError(f'{kind} data of {flat.size} bytes is corrupt or truncated '
                                   '(OpenCV could not decode it)')
    if decoded.shape[:2] != (height, width):
        raise ImageConversionError(f'{kind} decoded to {decoded.shape[1]}x{decoded.shape[0]} '
                                   f'but its header says {width}x{height}')
    if decoded.dtype == np.uint16:
        decoded = (decoded >> 8).astype(np.uint8)
    elif decoded.dtype != np.uint8:
        raise ImageConversionError(f'{kind} decoded to unsupported sample type {decoded.dtype}')
    if decoded.ndim == 2:
        return cv2.cvtColor(decoded, cv2.COLOR_GRAY2RGB)
    channels = decoded.shape[2]
    if channels == 3:
        return cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)
    if channels == 4:
        return cv2.cvtColor(decoded, cv2.COLOR_BGRA2RGB)
    raise ImageConversionError(f'{kind} decoded to unsupported channel count {channels}')


def _check_rgb(rgb: Any) -> np.ndarray:
    if not isinstance(rgb, np.ndarray):
        raise ImageConversionError(f'rgb must be a numpy array, got {type(rgb).__name__}')
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ImageConversionError(f'rgb must be an (H, W, 3) uint8 array, got shape '
                                   f'{rgb.shape} dtype {rgb.dtype}')
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ImageConversionError(f'rgb image is empty: shape {rgb.shape}')
    return rgb


def rgb_to_image_fields(rgb: np.ndarray, encoding: str = 'rgb8') -> ImageFields:
    """Return the ``sensor_msgs/Image`` fields for an (H, W, 3) uint8 RGB array.

    ``encoding`` is one of ``OUTPUT_ENCODINGS``; ``mono8`` uses OpenCV's luma weights
    (0.299 R + 0.587 G + 0.114 B), ``rgba8``/``bgra8`` get an opaque alpha (255). Rows are
    unpadded (``step = width * channels``).
    """
    rgb = _check_rgb(rgb)
    conversions = {
        'rgb8': None,
        'bgr8': cv2.COLOR_RGB2BGR,
        'mono8': cv2.COLOR_RGB2GRAY,
        'rgba8': cv2.COLOR_RGB2RGBA,
        'bgra8': cv2.COLOR_RGB2BGRA,
    }
    if encoding not in conversions:
        raise ImageConversionError(f'cannot write encoding {encoding!r}; supported: '
                                   f'{", ".join(OUTPUT_ENCODINGS)}')
    code = conversions[encoding]
    pixels = np.ascontiguousarray(rgb if code is None else cv2.cvtColor(rgb, code))
    height, width = rgb.shape[:2]
    channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    return ImageFields(height=height, width=width, encoding=encoding, step=width * channels,
                       data=pixels.tobytes())


def encode_compressed(rgb: np.ndarray, fmt: str = 'jpeg', quality: int = 90) -> bytes:
    """Encode an (H, W, 3) uint8 RGB array as JPEG or PNG bytes (a CompressedImage payload).

    ``quality`` (0..100) applies to JPEG; PNG is lossless and ignores it.
    """
    rgb = _check_rgb(rgb)
    if fmt not in COMPRESSED_FORMATS:
        raise ImageConversionError(f'compressed format must be one of {COMPRESSED_FORMATS}, '
                                   f'got {fmt!r}')
    if isinstance(quality, bool) or not isinstance(quality, (int, np.integer)) or not (
            0 <= quality <= 100):
        raise ImageConversionError(f'JPEG quality must be an integer in 0..100, got {quality!r}')
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    if fmt == 'jpeg':
        ok, encoded = cv2.imencode('.jpg', bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    else:
        ok, encoded = cv2.imencode('.png', bgr)
    if not ok:
        raise ImageConversionError(f'OpenCV failed to encode a {rgb.shape} image as {fmt}')
    return encoded.tobytes()
