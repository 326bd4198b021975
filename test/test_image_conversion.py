"""Unit tests of mspr_ros.image_conversion (raw and compressed image messages)."""
import array
import io

import cv2
import numpy as np
from PIL import Image as PilImage
import pytest

from mspr_ros.image_conversion import (decode_compressed, encode_compressed, image_to_rgb,
                                       ImageConversionError, ImageFields, OUTPUT_ENCODINGS,
                                       rgb_to_image_fields, SUPPORTED_ENCODINGS)

RNG = np.random.default_rng(7)
RGB = RNG.integers(0, 256, (6, 5, 3), dtype=np.uint8)


def convert(fields, **kwargs):
    return image_to_rgb(fields.height, fields.width, fields.encoding, fields.step, fields.data,
                        **kwargs)


def test_supported_encodings():
    assert set(SUPPORTED_ENCODINGS) == {'rgb8', 'bgr8', 'rgba8', 'bgra8', 'mono8', 'mono16',
                                        'rgb16', 'bgr16', '16UC1', '8UC1', '8UC3'}


@pytest.mark.parametrize('encoding', ['rgb8', 'bgr8', 'rgba8', 'bgra8'])
def test_colour_encodings_round_trip_exactly(encoding):
    fields = rgb_to_image_fields(RGB, encoding)
    channels = 4 if 'a' in encoding else 3
    assert (fields.height, fields.width, fields.step) == (6, 5, 5 * channels)
    assert len(fields.data) == 6 * 5 * channels
    rgb = convert(fields)
    assert rgb.dtype == np.uint8 and rgb.shape == (6, 5, 3) and rgb.flags.c_contiguous
    np.testing.assert_array_equal(rgb, RGB)


def test_byte_layout_of_written_encodings():
    pixel = np.array([[[10, 20, 30]]], dtype=np.uint8)
    assert rgb_to_image_fields(pixel, 'rgb8').data == bytes([10, 20, 30])
    assert rgb_to_image_fields(pixel, 'bgr8').data == bytes([30, 20, 10])
    assert rgb_to_image_fields(pixel, 'rgba8').data == bytes([10, 20, 30, 255])
    assert rgb_to_image_fields(pixel, 'bgra8').data == bytes([30, 20, 10, 255])
    # OpenCV luma: 0.299 * 10 + 0.587 * 20 + 0.114 * 30 = 18.15
    assert rgb_to_image_fields(pixel, 'mono8').data == bytes([18])


def test_mono8_round_trips_grey_images_and_fills_three_equal_channels():
    grey = np.repeat(RNG.integers(0, 256, (4, 7, 1), dtype=np.uint8), 3, axis=2)
    fields = rgb_to_image_fields(grey, 'mono8')
    assert fields.step == 7
    np.testing.assert_array_equal(convert(fields), grey)
    for encoding in ('mono8', '8UC1'):
        rgb = image_to_rgb(1, 3, encoding, 3, bytes([0, 128, 255]))
        np.testing.assert_array_equal(rgb[0], [[0, 0, 0], [128, 128, 128], [255, 255, 255]])


def test_8uc3_is_bgr_as_in_cv_bridge():
    rgb = image_to_rgb(1, 1, '8UC3', 3, bytes([30, 20, 10]))
    np.testing.assert_array_equal(rgb[0, 0], [10, 20, 30])


def test_output_encodings_and_errors():
    assert OUTPUT_ENCODINGS == ('rgb8', 'bgr8', 'mono8', 'rgba8', 'bgra8')
    with pytest.raises(ImageConversionError, match='cannot write encoding'):
        rgb_to_image_fields(RGB, 'mono16')
    with pytest.raises(ImageConversionError, match=r'\(H, W, 3\) uint8'):
        rgb_to_image_fields(RGB.astype(np.float32))
    with pytest.raises(ImageConversionError, match=r'\(H, W, 3\) uint8'):
        rgb_to_image_fields(RGB[:, :, 0])
    with pytest.raises(ImageConversionError, match='empty'):
        rgb_to_image_fields(np.zeros((0, 4, 3), np.uint8))


@pytest.mark.parametrize('encoding', ['rgb8', 'bgr8', 'rgba8', 'mono8', 'bgr16', 'mono16'])
def test_padded_step(encoding):
    channels = {'rgb8': 3, 'bgr8': 3, 'rgba8': 4, 'mono8': 1, 'bgr16': 3, 'mono16': 1}[encoding]
    width_bytes = 2 if '16' in encoding else 1
    height, width, pad = 3, 4, 7
    row_bytes = width * channels * width_bytes
    pixels = RNG.integers(0, 256, (height, row_bytes), dtype=np.uint8)
    padded = np.concatenate([pixels, np.full((height, pad), 0xAB, np.uint8)], axis=1)
    unpadded = image_to_rgb(height, width, encoding, row_bytes, pixels.tobytes())
    with_padding = image_to_rgb(height, width, encoding, row_bytes + pad, padded.tobytes())
    np.testing.assert_array_equal(with_padding, unpadded)
    assert with_padding.flags.c_contiguous


def test_sixteen_bit_scaling_and_endianness():
    values = np.array([[0, 255, 256, 0x1234, 0xFFFF]], dtype=np.uint16)
    expected = np.array([0, 0, 1, 0x12, 0xFF], dtype=np.uint8)
    for encoding in ('mono16', '16UC1'):
        little = image_to_rgb(1, 5, encoding, 10, values.astype('<u2').tobytes())
        big = image_to_rgb(1, 5, encoding, 10, values.astype('>u2').tobytes(), is_bigendian=True)
        for rgb in (little, big):
            np.testing.assert_array_equal(rgb[0], np.repeat(expected[:, None], 3, axis=1))
    # the wrong byte order gives the low bytes: proves is_bigendian is honoured
    wrong = image_to_rgb(1, 5, 'mono16', 10, values.astype('>u2').tobytes())
    np.testing.assert_array_equal(wrong[0, :, 0], [0, 0xFF, 0, 0x34, 0xFF])
    colour = np.array([[[0x0100, 0x8000, 0xFF00]]], dtype=np.uint16)
    np.testing.assert_array_equal(
        image_to_rgb(1, 1, 'rgb16', 6, colour.astype('<u2').tobytes())[0, 0], [1, 0x80, 0xFF])
    np.testing.assert_array_equal(
        image_to_rgb(1, 1, 'bgr16', 6, colour.astype('>u2').tobytes(), is_bigendian=True)[0, 0],
        [0xFF, 0x80, 1])


def test_sixteen_bit_round_trip_of_eight_bit_content():
    # 8-bit values stored in the high byte come back exactly
    wide = RGB.astype(np.uint16) << 8
    rgb = image_to_rgb(6, 5, 'rgb16', 30, wide.astype('<u2').tobytes())
    np.testing.assert_array_equal(rgb, RGB)
    bgr = image_to_rgb(6, 5, 'bgr16', 30, wide[:, :, ::-1].astype('<u2').tobytes())
    np.testing.assert_array_equal(bgr, RGB)


@pytest.mark.parametrize('wrap', [bytes, bytearray, memoryview, lambda b: array.array('B', b),
                                  lambda b: np.frombuffer(b, np.uint8)])
def test_buffer_types(wrap):
    fields = rgb_to_image_fields(RGB, 'bgr8')
    np.testing.assert_array_equal(image_to_rgb(6, 5, 'bgr8', 15, wrap(fields.data)), RGB)


def test_rgb8_without_padding_is_a_read_only_view_of_the_buffer():
    buffer = array.array('B', RGB.tobytes())  # what rclpy delivers
    rgb = image_to_rgb(6, 5, 'rgb8', 15, buffer)
    assert np.shares_memory(rgb, np.frombuffer(buffer, np.uint8))
    assert not rgb.flags.writeable
    converted = image_to_rgb(6, 5, 'bgr8', 15, buffer)
    assert converted.flags.writeable and not np.shares_memory(converted,
                                                              np.frombuffer(buffer, np.uint8))


@pytest.mark.parametrize('height, width, encoding, step, size, message', [
    (0, 5, 'rgb8', 15, 0, 'empty'),
    (6, 0, 'rgb8', 0, 0, 'empty'),
    (6, 5, 'yuv422', 10, 60, "unsupported image encoding 'yuv422'"),
    (6, 5, 'RGB8', 15, 90, 'unsupported image encoding'),
    (6, 5, 'rgb8', 14, 84, r'step 14 is smaller than width 5 x 3 channels x 1 bytes = 15'),
    (6, 5, 'mono16', 9, 54, r'step 9 is smaller than .* = 10'),
    (6, 5, 'rgb8', 15, 89, r'image data has 89 bytes, expected height 6 x step 15 = 90'),
    (6, 5, 'rgb8', 15, 91, r'image data has 91 bytes'),
    (5000, 4000, 'rgb8', 12000, 0, r'4000x5000 = 20000000 pixels exceeds max_pixels 16777216'),
    (6.0, 5, 'rgb8', 15, 90, 'height must be an integer'),
])
def test_raw_errors(height, width, encoding, step, size, message):
    with pytest.raises(ImageConversionError, match=message):
        image_to_rgb(height, width, encoding, step, bytes(size))


def test_oversized_image_is_refused_before_touching_data():
    class Untouchable:
        """Not a buffer: reading it would fail with a different error."""

        def __buffer__(self, flags):
            raise AssertionError('the data must not be read')

    with pytest.raises(ImageConversionError, match='exceeds max_pixels'):
        image_to_rgb(8192, 8192, 'rgb8', 3 * 8192, Untouchable())
    with pytest.raises(ImageConversionError, match='exceeds max_pixels 100'):
        image_to_rgb(11, 10, 'mono8', 10, bytes(110), max_pixels=100)


def test_non_buffer_data_is_rejected():
    with pytest.raises(ImageConversionError, match='bytes-like'):
        image_to_rgb(1, 3, 'mono8', 3, [0, 1, 2])


@pytest.mark.parametrize('value', [0, 255])
def test_all_black_and_all_white(value):
    flat = np.full((8, 8, 3), value, np.uint8)
    for encoding in OUTPUT_ENCODINGS:
        np.testing.assert_array_equal(convert(rgb_to_image_fields(flat, encoding)), flat)
    np.testing.assert_array_equal(decode_compressed(encode_compressed(flat, 'png')), flat)
    decoded = decode_compressed(encode_compressed(flat, 'jpeg'))
    assert np.max(np.abs(decoded.astype(int) - value)) <= 1


def test_png_round_trip_is_exact_and_jpeg_is_close():
    columns, rows = np.meshgrid(np.arange(32) * 8, np.arange(24) * 10, indexing='xy')
    smooth = np.dstack([columns, rows, np.full((24, 32), 77)]).astype(np.uint8)
    np.testing.assert_array_equal(decode_compressed(encode_compressed(smooth, 'png')), smooth)
    jpeg = encode_compressed(smooth, 'jpeg', quality=95)
    assert jpeg[:3] == b'\xff\xd8\xff'
    decoded = decode_compressed(array.array('B', jpeg))
    assert decoded.shape == smooth.shape and decoded.dtype == np.uint8
    assert np.mean(np.abs(decoded.astype(int) - smooth)) < 3.0
    # channel order: a red image stays red
    red = np.zeros((16, 16, 3), np.uint8)
    red[..., 0] = 255
    assert decode_compressed(encode_compressed(red, 'jpeg'))[8, 8].argmax() == 0


def pillow_png(array_, mode):
    buffer = io.BytesIO()
    PilImage.fromarray(array_, mode).save(buffer, 'PNG')
    return buffer.getvalue()


def test_compressed_grey_alpha_and_sixteen_bit():
    grey = RNG.integers(0, 256, (5, 4), dtype=np.uint8)
    np.testing.assert_array_equal(decode_compressed(pillow_png(grey, 'L')),
                                  np.repeat(grey[:, :, None], 3, axis=2))
    rgba = np.dstack([RGB, np.full((6, 5), 9, np.uint8)])
    np.testing.assert_array_equal(decode_compressed(pillow_png(rgba, 'RGBA')), RGB)
    wide = (RGB.astype(np.uint16) << 8) | 0x7F
    ok, png16 = cv2.imencode('.png', wide[:, :, ::-1].copy())
    assert ok
    np.testing.assert_array_equal(decode_compressed(png16.tobytes()), RGB)


def test_corrupt_and_truncated_compressed_data():
    png = encode_compressed(RGB, 'png')
    jpeg = encode_compressed(RGB, 'jpeg')
    with pytest.raises(ImageConversionError, match='empty'):
        decode_compressed(b'')
    with pytest.raises(ImageConversionError, match='neither JPEG nor PNG'):
        decode_compressed(b'GIF89a' + bytes(100))
    with pytest.raises(ImageConversionError, match='truncated'):
        decode_compressed(jpeg[:len(jpeg) // 2])
    with pytest.raises(ImageConversionError, match='truncated'):
        decode_compressed(jpeg[:-2])
    with pytest.raises(ImageConversionError, match='corrupt or truncated'):
        decode_compressed(png[:len(png) - 20])
    with pytest.raises(ImageConversionError, match='corrupt'):
        decode_compressed(png[:20])
    # a JPEG whose entropy-coded data is garbage but whose header and end marker are intact
    garbled = jpeg[:2] + bytes(len(jpeg) - 4) + jpeg[-2:]
    with pytest.raises(ImageConversionError):
        decode_compressed(garbled)
    # zero padding after the end marker is tolerated
    assert decode_compressed(jpeg + bytes(16)).shape == RGB.shape


def test_compressed_decompression_bomb_is_refused_from_the_header():
    big = encode_compressed(np.zeros((300, 400, 3), np.uint8), 'png')
    with pytest.raises(ImageConversionError, match=r'400x300 = 120000 pixels exceeds'):
        decode_compressed(big, max_pixels=100_000)


def test_encode_compressed_validation():
    with pytest.raises(ImageConversionError, match='format'):
        encode_compressed(RGB, 'webp')
    with pytest.raises(ImageConversionError, match='quality'):
        encode_compressed(RGB, 'jpeg', quality=101)
    with pytest.raises(ImageConversionError, match=r'\(H, W, 3\) uint8'):
        encode_compressed(RGB.astype(np.uint16))


def test_image_fields_is_a_plain_record():
    fields = ImageFields(1, 2, 'rgb8', 6, bytes(6))
    assert fields.data == bytes(6) and fields.encoding == 'rgb8'
