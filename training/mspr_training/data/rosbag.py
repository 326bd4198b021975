"""Posed images from rosbag2 recordings (mcap or sqlite3) through ``rosbags``, no ROS runtime.

Images come from a ``sensor_msgs/Image`` or ``sensor_msgs/CompressedImage`` topic; ground truth
from a pose topic (``geometry_msgs/PoseStamped``, ``PoseWithCovarianceStamped`` or
``nav_msgs/Odometry``) or from a pair of TF frames composed through the recorded TF tree. Topics
that are not asked for are ignored.
"""
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
import logging
from pathlib import Path
from typing import Iterator

import numpy as np
from rosbags.highlevel import AnyReader
from rosbags.typesys import get_typestore, Stores

from mspr_ros.camera import topics as camera_topics
from mspr_ros.camera.model import CameraModel
from mspr_ros.geometry.tf_history import clean_frame_id, TransformBuffer, TransformDataError
from mspr_ros.geometry.transforms import Transform
from mspr_ros.image_conversion import decode_compressed, image_to_rgb, ImageConversionError
from mspr_training.data.cameras import BagCameras
from mspr_training.data.samples import DatasetError, PoseSample
from mspr_training.data.trajectory import Trajectory, trajectory_from_unsorted

LOGGER = logging.getLogger(__name__)

IMAGE_TYPE = 'sensor_msgs/msg/Image'
COMPRESSED_TYPE = 'sensor_msgs/msg/CompressedImage'
POSE_TYPES = (
    'geometry_msgs/msg/PoseStamped',
    'geometry_msgs/msg/PoseWithCovarianceStamped',
    'nav_msgs/msg/Odometry',
)
TF_TYPE = 'tf2_msgs/msg/TFMessage'
STRING_TYPE = 'std_msgs/msg/String'
CAMERA_INFO_TYPE = 'sensor_msgs/msg/CameraInfo'
#: Default largest gap between two ground-truth poses that an image stamp may be interpolated
#: across (a 30 Hz stream has 33 ms gaps; a 10 Hz motion-capture stream 100 ms).
DEFAULT_MAX_GAP_NS = 200_000_000


def typestore():
    """Return the message type store used to read and write bags (ROS 2 Kilted std types)."""
    return get_typestore(Stores.ROS2_KILTED)


@dataclass(frozen=True, eq=False)
class BagImage:
    """One image message: decoded pixels, or the reason it could not be decoded.

    Attributes:
        stamp_ns: ``header.stamp`` in nanoseconds (the bag's receive time when the header stamp
            is zero, i.e. unset).
        frame_id: ``header.frame_id``.
        rgb: H x W x 3 uint8 RGB, or None when decoding failed.
        error: why decoding failed, or None.
    """

    stamp_ns: int
    frame_id: str
    rgb: np.ndarray | None
    error: str | None


@dataclass
class BagReadStats:
    """Counts of what ``read_rosbag`` kept and why it excluded the rest (none are silent)."""

    images: int = 0
    kept: int = 0
    undecodable: int = 0
    without_ground_truth: int = 0
    without_scene: int = 0
    errors: Counter = field(default_factory=Counter)

    def summary(self):
        """Return a one-line human-readable summary."""
        text = (f'{self.kept}/{self.images} images kept; {self.undecodable} undecodable, '
                f'{self.without_ground_truth} without ground truth, '
                f'{self.without_scene} without scene')
        if self.errors:
            text += ' (' + '; '.join(f'{n}x {e}' for e, n in self.errors.most_common(3)) + ')'
        return text


@dataclass(frozen=True, eq=False)
class BagReadResult:
    """Samples of a bag and the counts of excluded images."""

    samples: list
    stats: BagReadStats


@contextmanager
def open_bag(bag_path):
    """Open a rosbag2 folder (or storage file) as an ``AnyReader``; DatasetError if unreadable."""
    bag_path = Path(bag_path)
    if not bag_path.exists():
        raise DatasetError(f'{bag_path}: bag does not exist')
    reader = AnyReader([bag_path], default_typestore=typestore())
    try:
        reader.open()
    except Exception as error:  # rosbags raises several unrelated types for unreadable bags
        raise DatasetError(f'{bag_path}: cannot open as a rosbag2: {error}') from error
    try:
        yield reader
    finally:
        reader.close()


def _connections(reader, bag_path, topic, types):
    """Return the connections of ``topic``; DatasetError when absent or of another type."""
    connections = [c for c in reader.connections if c.topic == topic]
    if not connections:
        topics = ', '.join(sorted({c.topic for c in reader.connections}))
        raise DatasetError(f'{bag_path}: no topic {topic!r} (topics: {topics})')
    for connection in connections:
        if connection.msgtype not in types:
            raise DatasetError(
                f'{bag_path}: topic {topic!r} has type {connection.msgtype}, expected one of '
                f'{", ".join(types)}')
    return connections


def _messages(reader, bag_path, connections):
    """Yield (connection, log time, message) in bag order; DatasetError on a corrupt message."""
    for connection, log_time, raw in reader.messages(connections=connections):
        try:
            message = reader.deserialize(raw, connection.msgtype)
        except Exception as error:  # rosbags raises several types for corrupt messages
            raise DatasetError(
                f'{bag_path}: corrupt message on {connection.topic!r} at {log_time} ns: '
                f'{error}') from error
        yield connection, log_time, message


def _stamp_ns(header, log_time_ns):
    """Return the header stamp in nanoseconds, or the log time when the stamp is unset."""
    stamp = int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)
    return stamp if stamp != 0 else int(log_time_ns)


def iter_bag_images(bag_path, topic) -> Iterator[BagImage]:
    """Yield every message of an image topic in bag order, decoded to RGB.

    Supports ``sensor_msgs/Image`` (the encodings of ``mspr_ros.image_conversion.image_to_rgb``,
    honouring ``step``) and ``sensor_msgs/CompressedImage`` (OpenCV decode). A message that
    cannot be deserialised or decoded yields ``rgb=None`` and the reason; it never raises.

    Raises:
        DatasetError: the bag cannot be opened, or ``topic`` is absent or not an image topic.
    """
    with open_bag(bag_path) as reader:
        connections = _connections(reader, bag_path, topic, (IMAGE_TYPE, COMPRESSED_TYPE))
        for connection, log_time, raw in reader.messages(connections=connections):
            try:
                message = reader.deserialize(raw, connection.msgtype)
            except Exception as error:  # a truncated or corrupt message must not stop the bag
                yield BagImage(int(log_time), '', None, f'cannot deserialise: {error}')
                continue
            stamp = _stamp_ns(message.header, log_time)
            frame_id = message.header.frame_id
            try:
                if connection.msgtype == IMAGE_TYPE:
                    rgb = image_to_rgb(message.height, message.width, message.encoding,
                                       message.step, message.data, bool(message.is_bigendian))
                else:
                    rgb = decode_compressed(message.data)
            except ImageConversionError as error:
                yield BagImage(stamp, frame_id, None, str(error))
                continue
            # image_to_rgb may return a read-only view of the message buffer; samples own theirs.
            yield BagImage(stamp, frame_id, np.array(rgb, copy=True), None)


def read_bag_cameras(bag_path, image_topic, topic=None) -> BagCameras:
    """Read the cameras of a bag's ``camera_info`` topic.

    ``topic`` defaults to the one beside ``image_topic`` (``mspr_ros.camera.topics``). A bag
    without it gives no cameras (the images' camera is unknown), not an error.

    Raises:
        DatasetError: the topic has another type, or a message states no valid camera (an
            uncalibrated all-zero ``camera_info``, an unknown distortion model), naming it.
    """
    topic = topic or camera_topics.camera_info_topic(image_topic)
    stamps, cameras = [], []
    with open_bag(bag_path) as reader:
        if not any(c.topic == topic for c in reader.connections):
            return BagCameras([], [], topic)
        connections = _connections(reader, bag_path, topic, (CAMERA_INFO_TYPE,))
        for _, log_time, message in _messages(reader, bag_path, connections):
            stamp = _stamp_ns(message.header, log_time)
            try:
                camera = CameraModel.from_camera_info(message.width, message.height,
                                                      message.distortion_model, message.d,
                                                      message.k)
            except ValueError as error:
                raise DatasetError(f'{bag_path}: {topic} at {stamp} ns: {error}') from error
            stamps.append(stamp)
            cameras.append(camera)
    return BagCameras(stamps, cameras, topic)


def read_bag_trajectory(bag_path, pose_topic=None, frames=None, max_gap_ns=None,
                        tf_topics=('/tf',), static_tf_topics=('/tf_static',)) -> Trajectory:
    """Read a ground-truth trajectory from a pose topic or from a pair of TF frames.

    Args:
        bag_path: rosbag2 folder (or storage file).
        pose_topic: a PoseStamped / PoseWithCovarianceStamped / Odometry topic; its header frame
            becomes ``frame_id`` (exactly one of ``pose_topic`` and ``frames``).
        frames: ``(fixed_frame, moving_frame)``, e.g. ``('map', 'camera_optical')``: the moving
            frame's pose in the fixed frame, composed through any chain of recorded transforms
            (e.g. map -> odom -> base_link -> camera_optical).
        max_gap_ns: with ``frames``, drop stamps where a dynamic transform of the chain would be
            interpolated across a larger gap (None: no limit).
        tf_topics: topics of dynamic ``tf2_msgs/TFMessage`` transforms.
        static_tf_topics: topics of static transforms (valid at all times).

    Raises:
        DatasetError naming the bag: missing topic, wrong type, unknown frames or no chain.
    """
    if (pose_topic is None) == (frames is None):
        raise ValueError('give exactly one of pose_topic and frames')
    if pose_topic is not None:
        return _pose_topic_trajectory(bag_path, pose_topic)
    return _tf_trajectory(bag_path, tuple(frames), max_gap_ns, tf_topics, static_tf_topics)


def _pose_topic_trajectory(bag_path, topic):
    """Return the trajectory recorded on a pose topic."""
    stamps, positions, quats, frame_ids = [], [], [], set()
    with open_bag(bag_path) as reader:
        connections = _connections(reader, bag_path, topic, POSE_TYPES)
        for connection, log_time, message in _messages(reader, bag_path, connections):
            is_pose_stamped = connection.msgtype == POSE_TYPES[0]
            pose = message.pose if is_pose_stamped else message.pose.pose
            stamps.append(_stamp_ns(message.header, log_time))
            positions.append((pose.position.x, pose.position.y, pose.position.z))
            quats.append((pose.orientation.x, pose.orientation.y, pose.orientation.z,
                          pose.orientation.w))
            frame_ids.add(message.header.frame_id)
    if not stamps:
        raise DatasetError(f'{bag_path}: topic {topic!r} holds no message')
    if len(frame_ids) != 1:
        raise DatasetError(
            f'{bag_path}: topic {topic!r} mixes frames {sorted(frame_ids)}; expected one')
    if not np.all(np.isfinite(quats)) or np.any(np.linalg.norm(quats, axis=1) < 1e-9):
        raise DatasetError(f'{bag_path}: topic {topic!r} holds a zero or non-finite quaternion')
    trajectory, duplicates = trajectory_from_unsorted(stamps, positions, quats, frame_ids.pop())
    if duplicates:
        LOGGER.warning('%s: %d messages on %s repeat a stamp; kept the last of each',
                       bag_path, duplicates, topic)
    return trajectory


def read_header_frames(bag_path, topic) -> tuple[np.ndarray, list[str]]:
    """Return the header stamps (int64 ns) and frame ids of a pose topic's messages, in bag order.

    For topics whose frame id is the information, e.g. the node's ``~/scene_camera_pose``, whose
    frame id names the scene of the image of that stamp. A zero stamp reads as the log time, as
    everywhere in this module.

    Raises:
        DatasetError: the bag cannot be opened, the topic is absent or not a pose topic
            (``POSE_TYPES``), or a message is corrupt.
    """
    stamps, frame_ids = [], []
    with open_bag(bag_path) as reader:
        connections = _connections(reader, bag_path, topic, POSE_TYPES)
        for _connection, log_time, message in _messages(reader, bag_path, connections):
            stamps.append(_stamp_ns(message.header, log_time))
            frame_ids.append(str(message.header.frame_id))
    return np.asarray(stamps, dtype=np.int64), frame_ids


def _tf_trajectory(bag_path, frames, max_gap_ns, tf_topics, static_tf_topics):
    """Return the trajectory of ``frames[1]`` in ``frames[0]`` from the recorded TF tree.

    Its stamps are the union of the stamps of the chain's dynamic edges, kept where every dynamic
    edge interpolates validly (inside its range, no gap over ``max_gap_ns``).
    """
    if len(frames) != 2:
        raise ValueError(f'frames must be (fixed_frame, moving_frame), got {frames!r}')
    buffer, repeats = read_transforms(bag_path, tf_topics, static_tf_topics)
    target, source = (clean_frame_id(frame) for frame in frames)
    try:
        stamps = buffer.chain_stamps(target, source)
        if len(stamps) == 0:
            raise LookupError(f'{target} -> {source} is connected by static transforms only: '
                              'no trajectory')
        positions, orientations, valid = buffer.lookup_many(target, source, stamps, max_gap_ns)
        if not np.any(valid):
            raise LookupError(f'{target} -> {source}: the chain transforms never overlap in time')
    except LookupError as error:
        raise DatasetError(f'{bag_path}: {error}') from None
    if repeats:
        LOGGER.warning('%s: %d TF messages repeat a stamp; kept the last of each',
                       bag_path, repeats)
    return Trajectory(stamps[valid], positions[valid], orientations[valid], target)


def read_transforms(bag_path, tf_topics=('/tf',), static_tf_topics=('/tf_static',),
                    required=True):
    """Return every recorded transform in a ``TransformBuffer``, and the repeated-stamp count.

    The buffer keeps the whole recording (no cache window). Frame names lose the leading ``/`` of
    ROS 1 names; a transform repeating an edge's stamp replaces the earlier one (counted).
    With ``required=False`` a bag without TF topics gives an empty buffer.

    Raises:
        DatasetError naming the bag: no TF topic (when ``required``), a topic of another type, a
        corrupt message, or an invalid tree (a frame with two parents, a cycle, an edge both
        static and dynamic).
    """
    static_topics = set(static_tf_topics)
    edges = {}  # (parent, child, static) -> (stamps, transforms), in bag order
    with open_bag(bag_path) as reader:
        connections = [c for c in reader.connections
                       if c.topic in set(tf_topics) | static_topics]
        if not connections:
            if not required:
                return TransformBuffer(cache_time_s=None), 0
            names = ', '.join(list(tf_topics) + list(static_tf_topics))
            raise DatasetError(f'{bag_path}: no TF topic among {names}')
        for connection in connections:
            if connection.msgtype != TF_TYPE:
                raise DatasetError(
                    f'{bag_path}: topic {connection.topic!r} has type {connection.msgtype}, '
                    f'expected {TF_TYPE}')
        for connection, log_time, message in _messages(reader, bag_path, connections):
            for item in message.transforms:
                key = (clean_frame_id(item.header.frame_id), clean_frame_id(item.child_frame_id),
                       connection.topic in static_topics)
                stamps, transforms = edges.setdefault(key, ([], []))
                stamps.append(_stamp_ns(item.header, log_time))
                transforms.append(_transform(item.transform, bag_path, connection.topic))
    buffer = TransformBuffer(cache_time_s=None)
    repeats = 0
    try:
        for (parent, child, static), (stamps, transforms) in edges.items():
            repeats += buffer.set_transforms(parent, child, stamps, transforms, static)
    except TransformDataError as error:
        raise DatasetError(f'{bag_path}: invalid TF tree: {error}') from None
    return buffer, repeats


def _transform(message, bag_path, topic):
    """Return the ``Transform`` of a ``geometry_msgs/Transform``; DatasetError if degenerate."""
    t, q = message.translation, message.rotation
    try:
        return Transform([t.x, t.y, t.z], [q.x, q.y, q.z, q.w])
    except ValueError as error:
        raise DatasetError(f'{bag_path}: invalid transform on {topic!r}: {error}') from None


def _scene_changes(bag_path, topic):
    """Return (log times int64 (K,), scene names) of a std_msgs/String scene topic."""
    times, names = [], []
    with open_bag(bag_path) as reader:
        connections = _connections(reader, bag_path, topic, (STRING_TYPE,))
        for connection, log_time, raw in reader.messages(connections=connections):
            times.append(int(log_time))
            names.append(reader.deserialize(raw, connection.msgtype).data)
    return np.asarray(times, dtype=np.int64), names


def read_rosbag_with_stats(bag_path, image_topic, pose_topic=None, frames=None, scene='bag',
                           scene_topic=None, max_gap_ns=DEFAULT_MAX_GAP_NS,
                           camera_info_topic=None, **tf_options) -> BagReadResult:
    """Read posed images from a bag and count every image it excludes.

    Ground truth is interpolated at each image stamp (``Trajectory.interpolate`` with
    ``max_gap_ns``). Images are excluded, and counted in ``stats``, when they cannot be decoded,
    have no valid ground truth at their stamp, or (with ``scene_topic``) precede the first scene
    message. The sample scene is ``scene``, or the latest ``std_msgs/String`` of ``scene_topic``
    recorded at or before the image's stamp. ``sequence`` is the bag's name. Each sample's
    ``camera`` is its ``camera_info`` (:func:`read_bag_cameras`; ``camera_info_topic`` defaults
    to the one beside the image topic), None when the bag has none.

    ``tf_options`` (``tf_topics``, ``static_tf_topics``) are passed to ``read_bag_trajectory``.
    """
    bag_path = Path(bag_path)
    trajectory = read_bag_trajectory(bag_path, pose_topic, frames, max_gap_ns, **tf_options)
    cameras = read_bag_cameras(bag_path, image_topic, camera_info_topic)
    stats = BagReadStats()
    decoded = []
    for image in iter_bag_images(bag_path, image_topic):
        stats.images += 1
        if image.rgb is None:
            stats.undecodable += 1
            stats.errors[image.error] += 1
        else:
            decoded.append(image)
    if scene_topic is not None:
        change_times, change_names = _scene_changes(bag_path, scene_topic)
    stamps = np.asarray([image.stamp_ns for image in decoded], dtype=np.int64)
    positions, orientations, valid = trajectory.interpolate(stamps, max_gap_ns)
    samples = []
    for index, image in enumerate(decoded):
        if not valid[index]:
            stats.without_ground_truth += 1
            continue
        name = scene
        if scene_topic is not None:
            latest = np.searchsorted(change_times, image.stamp_ns, side='right') - 1
            if latest < 0:
                stats.without_scene += 1
                continue
            name = change_names[latest]
        samples.append(PoseSample(
            scene=name, sequence=bag_path.stem, position=positions[index],
            orientation=orientations[index], image=image.rgb, stamp_ns=image.stamp_ns,
            frame=image.frame_id, camera=_image_camera(cameras.at(image.stamp_ns), image.rgb)))
    stats.kept = len(samples)
    return BagReadResult(samples, stats)


def _image_camera(camera, rgb):
    """Return ``camera`` when it states the image's size, else None (it describes another)."""
    if camera is None or (camera.width, camera.height) != (rgb.shape[1], rgb.shape[0]):
        return None
    return camera


def read_rosbag(bag_path, image_topic, pose_topic=None, frames=None, scene='bag',
                scene_topic=None, max_gap_ns=DEFAULT_MAX_GAP_NS, camera_info_topic=None,
                **tf_options) -> list[PoseSample]:
    """Return the posed images of a bag (see ``read_rosbag_with_stats``).

    Excluded images (undecodable, no ground truth, no scene) are not an error: they are logged
    as one WARNING with their counts. Use ``read_rosbag_with_stats`` to get the counts.
    """
    result = read_rosbag_with_stats(bag_path, image_topic, pose_topic, frames, scene,
                                    scene_topic, max_gap_ns, camera_info_topic, **tf_options)
    if result.stats.kept < result.stats.images:
        LOGGER.warning('%s: %s', bag_path, result.stats.summary())
    return result.samples
