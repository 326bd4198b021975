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
This module also holds ``OutputBag``, the small typed rosbag2 writer ``mspr-bag-eval --write-bag``
uses for its outputs.
"""
import argparse
from dataclasses import dataclass
import logging
from pathlib import Path
import re
import sys

import numpy as np
from rosbags.rosbag2 import StoragePlugin, Writer
from tqdm import tqdm

from mspr_ros.geometry.transforms import Transform
from mspr_ros.image_conversion import encode_compressed
from mspr_training.data.cambridge import read_cambridge
from mspr_training.data.rosbag import typestore
from mspr_training.data.samples import DatasetError, load_rgb
from mspr_training.data.seven_scenes import read_7scenes

LOGGER = logging.getLogger(__name__)

FORMATS = ('cambridge', '7scenes')
STORAGES = {'mcap': StoragePlugin.MCAP, 'sqlite3': StoragePlugin.SQLITE3}
#: rosbag2 metadata version written (as ``mspr_training.synth``; read by Iron and newer).
BAG_VERSION = 8
IMAGE_TOPIC = '/camera/image_raw'
COMPRESSED_TOPIC = '/camera/image_raw/compressed'
GT_TOPIC = '/ground_truth/camera_pose'
SCENE_TOPIC = '/ground_truth/scene'
CAMERA_FRAME = 'camera_optical'
MAP_FRAME = 'map'
#: Default first stamp: a fixed, clearly synthetic time (2023-11-14 22:13:20 UTC), so that
#: converting the same sequence twice gives identical bags.
DEFAULT_START_NS = 1_700_000_000 * 1_000_000_000
NS_PER_S = 1_000_000_000
_COMPRESSED_FORMATS = {'.jpg': 'jpeg', '.jpeg': 'jpeg', '.png': 'png'}


class OutputBag:
    """A rosbag2 recording being written with ``rosbags``, with one method per message kind.

    Connections are created on the first message of each topic. Use as a context manager; the
    bag is complete (metadata written) when the ``with`` block ends.
    """

    def __init__(self, path, storage: str = 'mcap'):
        """Prepare a new bag folder ``path`` (must not exist) in ``storage`` 'mcap' or 'sqlite3'.

        Raises:
            ValueError: unknown storage. FileExistsError: ``path`` exists.
        """
        if storage not in STORAGES:
            raise ValueError(f'storage must be one of {tuple(STORAGES)}, got {storage!r}')
        self.path = Path(path)
        if self.path.exists():
            raise FileExistsError(f'{self.path}: already exists; rosbag2 writers never overwrite')
        self._store = typestore()
        self._writer = Writer(self.path, version=BAG_VERSION, storage_plugin=STORAGES[storage])
        self._connections = {}

    def __enter__(self):
        """Open the bag for writing."""
        self._writer.open()
        return self

    def __exit__(self, *exc_info):
        """Finish the bag (writes metadata.yaml)."""
        self._writer.close()

    def _write(self, topic, log_time_ns, message):
        connection = self._connections.get(topic)
        if connection is None:
            connection = self._writer.add_connection(topic, message.__msgtype__,
                                                     typestore=self._store)
            self._connections[topic] = connection
        data = self._store.serialize_cdr(message, message.__msgtype__)
        self._writer.write(connection, int(log_time_ns), data)

    def _type(self, name):
        return self._store.types[name]

    def _header(self, stamp_ns, frame_id):
        seconds, nanoseconds = divmod(int(stamp_ns), NS_PER_S)
        time_type = self._type('builtin_interfaces/msg/Time')
        return self._type('std_msgs/msg/Header')(
            stamp=time_type(sec=seconds, nanosec=nanoseconds), frame_id=frame_id)

    def _pose(self, transform: Transform):
        geometry = 'geometry_msgs/msg/'
        x, y, z = (float(v) for v in transform.translation)
        qx, qy, qz, qw = (float(v) for v in transform.rotation)
        return self._type(geometry + 'Pose')(
            position=self._type(geometry + 'Point')(x=x, y=y, z=z),
            orientation=self._type(geometry + 'Quaternion')(x=qx, y=qy, z=qz, w=qw))

    def write_image(self, topic, stamp_ns, frame_id, rgb: np.ndarray):
        """Write an H x W x 3 uint8 RGB array as a ``sensor_msgs/Image`` (rgb8)."""
        rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
        height, width = rgb.shape[:2]
        self._write(topic, stamp_ns, self._type('sensor_msgs/msg/Image')(
            header=self._header(stamp_ns, frame_id), height=height, width=width,
            encoding='rgb8', is_bigendian=0, step=width * 3, data=rgb.reshape(-1)))

    def write_compressed(self, topic, stamp_ns, frame_id, payload: bytes, fmt: str):
        """Write a JPEG or PNG payload as a ``sensor_msgs/CompressedImage`` (``fmt`` jpeg|png)."""
        self._write(topic, stamp_ns, self._type('sensor_msgs/msg/CompressedImage')(
            header=self._header(stamp_ns, frame_id), format=fmt,
            data=np.frombuffer(payload, dtype=np.uint8)))

    def write_pose(self, topic, stamp_ns, frame_id, transform: Transform):
        """Write ``transform`` as a ``geometry_msgs/PoseStamped`` in ``frame_id``."""
        self._write(topic, stamp_ns, self._type('geometry_msgs/msg/PoseStamped')(
            header=self._header(stamp_ns, frame_id), pose=self._pose(transform)))

    def write_pose_with_covariance(self, topic, stamp_ns, frame_id, transform: Transform,
                                   covariance: np.ndarray):
        """Write a ``PoseWithCovarianceStamped``; ``covariance`` (6, 6) in ROS order."""
        geometry = 'geometry_msgs/msg/'
        pose = self._type(geometry + 'PoseWithCovariance')(
            pose=self._pose(transform),
            covariance=np.asarray(covariance, dtype=np.float64).reshape(36))
        self._write(topic, stamp_ns, self._type(geometry + 'PoseWithCovarianceStamped')(
            header=self._header(stamp_ns, frame_id), pose=pose))

    def write_string(self, topic, log_time_ns, text: str):
        """Write a ``std_msgs/String``."""
        self._write(topic, log_time_ns, self._type('std_msgs/msg/String')(data=text))

    def write_float32(self, topic, log_time_ns, value: float):
        """Write a ``std_msgs/Float32``."""
        self._write(topic, log_time_ns, self._type('std_msgs/msg/Float32')(data=float(value)))

    def write_transform(self, topic, stamp_ns, parent, child, transform: Transform):
        """Write one ``T_parent_child`` as a ``tf2_msgs/TFMessage``."""
        geometry = 'geometry_msgs/msg/'
        x, y, z = (float(v) for v in transform.translation)
        qx, qy, qz, qw = (float(v) for v in transform.rotation)
        stamped = self._type(geometry + 'TransformStamped')(
            header=self._header(stamp_ns, parent), child_frame_id=child,
            transform=self._type(geometry + 'Transform')(
                translation=self._type(geometry + 'Vector3')(x=x, y=y, z=z),
                rotation=self._type(geometry + 'Quaternion')(x=qx, y=qy, z=qz, w=qw)))
        self._write(topic, stamp_ns, self._type('tf2_msgs/msg/TFMessage')(transforms=[stamped]))


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
    with OutputBag(out, storage) as bag:
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
