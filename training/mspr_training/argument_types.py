"""Argument types shared by the command lines of the training package and the benchmarks."""
import argparse

# The smallest image the renderer and the preprocessing accept.
MIN_IMAGE_SIDE = 8


def parse_size(text: str) -> tuple:
    """Parse ``WIDTHxHEIGHT`` (e.g. 640x480) into ``(width, height)`` for argparse."""
    try:
        width, height = (int(v) for v in text.lower().split('x'))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f'expected WIDTHxHEIGHT (e.g. 320x240), got {text!r}') from None
    if width < MIN_IMAGE_SIDE or height < MIN_IMAGE_SIDE:
        raise argparse.ArgumentTypeError(
            f'image size {text!r} is too small (min {MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE})')
    return width, height
