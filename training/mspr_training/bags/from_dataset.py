"""Convert a posed-image dataset sequence into a rosbag2 recording (CLI ``mspr-bag-from-dataset``).

Users replay real datasets (Cambridge Landmarks, 7-Scenes) through the node exactly like their
own recordings: ``mspr-bag-from-dataset --format cambridge --scene-dir KingsCollege --split test
--sequence seq2 --out kings_seq2`` then ``mspr-bag-eval kings_seq2 --weights W [--live]``.

The bag holds, per image at ``--rate`` Hz from a fixed start time:

- ``/camera/image_raw`` (``sensor_msgs/Image`` rgb8) or, with ``--compressed``,
  ``/camera/image_raw/compressed`` (``sensor_msgs/CompressedImage``: the dataset's own JPEG/PNG
  bytes copied unchanged, so nothing is recompressed), header frame ``camera_optical``;
- ``/ground_truth/camera_pose`` (``geometry_msgs/PoseStamped`` in ``map``): the camera optical
  frame's pose ``T_scene_cam`` as the readers return it (scene frame = map), same stamp;
- ``/ground_truth/scene`` (``std_msgs/String``): the scene name, once before the first image.

Frames are ordered by sequence, then by image file name (the datasets number their frames).
The bag is written with the project's one writer, ``mspr_training.bags.writer.BagWriter``.
"""
import argparse
from dataclasses import dataclass
import logging
from pathlib import Path
import re
import sys

from tqdm import tqdm

from mspr_ros.geometry.transforms import Transform
from mspr_ros.image_conversion import encode_compressed
from mspr_training.bags.writer import BagWriter, NS_PER_S, STORAGES
from mspr_training.data.cambridge import read_cambridge
from mspr_training.data.samples import DatasetError, load_rgb
from mspr_training.data.seven_scenes import read_7scenes

LOGGER = logging.getLogger(__name__)

FORMATS = ('cambridge', '7scenes')
IMAGE_TOPIC = '/camera/image_raw'
COMPRESSED_TOPIC = '/camera/image_raw/compressed'
GT_TOPIC = '/ground_truth/camera_pose'
SCENE_TOPIC = '/ground_truth/scene'
CAMERA_FRAME = 'camera_optical'
MAP_FRAME = 'map'
#: Default first stamp: a fixed, clearly synthetic time (2023-11-14 22:13:20 UTC), so that
#: converting the same sequence twice gives identical bags.
DEFAULT_START_NS = 1_700_000_000 * NS_PER_S
_COMPRESSED_FORMATS = {'.jpg': 'jpeg', '.jpeg': 'jpeg', '.png': 'png'}


@dataclass(frozen=True)
class ConversionSummary:
    """What ``convert_dataset`` wrote."""

    bag: Path
    scene: str
    sequences: tuple[str, ...]
    frames: int
    first_stamp_ns: int
    last_stamp_ns: int


def _sequence_number(name: str):
    """Return the integer in a sequence name (``seq2``, ``seq-02``, ``sequence2`` -> 2)."""
    digits = re.findall(r'\d+', name)
    return int(digits[-1]) if digits else None


def select_sequence(samples, sequence: str | None, scene_dir):
    """Return the samples of ``sequence`` (all when None), ordered by sequence and file name.

    A sequence matches by exact name, or by number (``seq2`` selects 7-Scenes ``seq-02``).

    Raises:
        DatasetError: no sample belongs to the sequence (the message lists those available).
    """
    available = sorted({s.sequence for s in samples})
    if sequence is not None:
        chosen = [s for s in samples if s.sequence == sequence]
        if not chosen and _sequence_number(sequence) is not None:
            chosen = [s for s in samples
                      if _sequence_number(s.sequence) == _sequence_number(sequence)]
        if not chosen:
            raise DatasetError(f'{scene_dir}: no sequence {sequence!r} in this split '
                               f'(available: {", ".join(available)})')
        samples = chosen
    return sorted(samples, key=lambda s: (s.sequence, Path(s.image_path).name))


def read_dataset(fmt: str, scene_dir, split: str):
    """Return the samples of a Cambridge or 7-Scenes scene split (DatasetError on bad input)."""
    if fmt == 'cambridge':
        return read_cambridge(scene_dir, split)
    if fmt == '7scenes':
        return read_7scenes(scene_dir, split)
    raise ValueError(f'format must be one of {FORMATS}, got {fmt!r}')


def _compressed_payload(sample):
    """Return (bytes, format) of a sample's image: the file itself when JPEG/PNG, else PNG."""
    fmt = _COMPRESSED_FORMATS.get(Path(sample.image_path).suffix.lower())
    if fmt is not None:
        return Path(sample.image_path).read_bytes(), fmt
    return encode_compressed(load_rgb(sample), 'png'), 'png'


def convert_dataset(fmt: str, scene_dir, out, split: str = 'test', sequence: str | None = None,
                    rate_hz: float = 10.0, storage: str = 'mcap', compressed: bool = False,
                    start_ns: int = DEFAULT_START_NS, progress: bool = False
                    ) -> ConversionSummary:
    """Write one dataset sequence (or a whole split) as a rosbag2 recording (module docstring).

    Raises:
        DatasetError: unreadable dataset or unknown sequence. ValueError: bad rate or storage.
        FileExistsError: ``out`` exists.
    """
    if not rate_hz > 0:
        raise ValueError(f'rate must be positive, got {rate_hz}')
    scene_dir = Path(scene_dir)
    samples = select_sequence(read_dataset(fmt, scene_dir, split), sequence, scene_dir)
    period_ns = int(round(NS_PER_S / rate_hz))
    scene = samples[0].scene
    with BagWriter(out, storage) as bag:
        bag.write_string(SCENE_TOPIC, start_ns, scene)
        for index, sample in enumerate(tqdm(samples, disable=not progress, unit='img',
                                            desc='convert')):
            stamp = start_ns + index * period_ns
            if compressed:
                payload, image_format = _compressed_payload(sample)
                bag.write_compressed(COMPRESSED_TOPIC, stamp, CAMERA_FRAME, payload,
                                     image_format)
            else:
                bag.write_image(IMAGE_TOPIC, stamp, CAMERA_FRAME, load_rgb(sample))
            bag.write_pose(GT_TOPIC, stamp, MAP_FRAME,
                           Transform(sample.position, sample.orientation))
    return ConversionSummary(Path(out), scene, tuple(sorted({s.sequence for s in samples})),
                             len(samples), start_ns, start_ns + (len(samples) - 1) * period_ns)


def build_parser() -> argparse.ArgumentParser:
    """Return the command-line parser of ``mspr-bag-from-dataset``."""
    parser = argparse.ArgumentParser(
        prog='mspr-bag-from-dataset',
        description='Convert a Cambridge Landmarks or 7-Scenes sequence into a rosbag2 file '
                    '(images, ground-truth camera poses in map, scene name).')
    parser.add_argument('--format', required=True, choices=FORMATS, help='dataset layout')
    parser.add_argument('--scene-dir', required=True, type=Path,
                        help='folder of one scene (e.g. KingsCollege or chess)')
    parser.add_argument('--split', default='test', choices=('train', 'test'))
    parser.add_argument('--sequence', default=None,
                        help='one sequence (seq2, seq-02); default: every sequence of the split')
    parser.add_argument('--out', required=True, type=Path, help='bag folder to create')
    parser.add_argument('--rate', type=float, default=10.0, help='image rate in Hz')
    parser.add_argument('--storage', default='mcap', choices=tuple(STORAGES))
    parser.add_argument('--compressed', action='store_true',
                        help=f'write {COMPRESSED_TOPIC} (the original JPEG/PNG bytes) '
                             f'instead of raw {IMAGE_TOPIC}')
    parser.add_argument('--start-time', type=float, default=DEFAULT_START_NS / NS_PER_S,
                        help='stamp of the first image, seconds since the epoch')
    return parser


def main(argv=None) -> int:
    """Run ``mspr-bag-from-dataset``; return the exit status (1 on bad input)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s: %(message)s')
    try:
        summary = convert_dataset(
            args.format, args.scene_dir, args.out, args.split, args.sequence, args.rate,
            args.storage, args.compressed, int(round(args.start_time * NS_PER_S)), progress=True)
    except (DatasetError, ValueError, FileExistsError) as error:
        print(f'mspr-bag-from-dataset: error: {error}', file=sys.stderr)
        return 1
    duration = (summary.last_stamp_ns - summary.first_stamp_ns) / NS_PER_S
    print(f'wrote {summary.bag}: {summary.frames} frames of scene {summary.scene} '
          f'(sequences {", ".join(summary.sequences)}), {duration:.1f} s at {args.rate:g} Hz')
    return 0


if __name__ == '__main__':
    sys.exit(main())
