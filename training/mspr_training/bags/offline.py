"""Offline rosbag evaluation: the core ``Localizer`` on every image of a recording, no ROS runtime.

The bag is read with ``rosbags`` (mcap or sqlite3; raw and compressed images). Each decodable
image goes through ``Localizer.localize``; the predicted pose ``T_scene_cam`` is placed in the map
with the bundle's per-scene alignment (``T_map_cam = T_map_scene[s] @ T_scene_cam``), exactly as
the node does. Estimates are then matched to ground truth by stamp (``match_ground_truth``, shared
with the live mode in ``bag_live``).

Ground truth, in order of preference:

- a pose topic (``PoseStamped``, ``PoseWithCovarianceStamped`` or ``Odometry``) holding the camera
  optical frame's pose; by default ``/ground_truth/camera_pose`` when the bag has it;
- a TF pair ``(fixed, moving)`` composed through ``/tf`` and ``/tf_static``. When ``moving`` is the
  image's frame the camera pose is compared; otherwise (e.g. ``base_link``) the estimate of that
  frame is ``T_map_cam @ T_cam_moving``, with ``T_cam_moving`` looked up in the bag's own TF tree
  at the image stamp (the camera extrinsic from ``/tf_static``): what the node publishes as the
  base pose.

Images outside the ground-truth time range, or between two ground-truth samples more than
``max_gap_ns`` apart, stay unmatched and are reported as such, never silently dropped.

Per-frame vs fused (``mspr_training.bags.fusion_replay``): every answered frame also goes
through the node's pose stream (gates, then the ``map -> odom`` fusion) with the node's
parameters and the bag's TF; both estimates are then compared on the same matched frames.
"""
from dataclasses import dataclass, replace
import logging
from pathlib import Path
import sys
import time
from typing import Iterable, Sequence

import numpy as np
from tqdm import tqdm
import yaml

import mspr_ros
from mspr_ros.camera.reprojection import MIN_COVERAGE
from mspr_ros.camera.selection import CameraSelection
from mspr_ros.geometry.tf_history import TransformBuffer
from mspr_ros.geometry.transforms import alignment_parameter_scene, SceneAlignment, Transform
from mspr_training.bags.fusion_replay import fused_block
from mspr_training.bags.report import BagEvaluation, FrameRecord, FrameStatus
from mspr_training.data.rosbag import (DEFAULT_MAX_GAP_NS, iter_bag_images, open_bag,
                                       read_bag_cameras, read_bag_trajectory, read_transforms,
                                       STRING_TYPE)
from mspr_training.data.samples import DatasetError
from mspr_training.data.trajectory import Trajectory

LOGGER = logging.getLogger(__name__)

DEFAULT_IMAGE_TOPIC = '/camera/image_raw'
DEFAULT_GT_TOPIC = '/ground_truth/camera_pose'
DEFAULT_SCENE_TOPIC = '/ground_truth/scene'
TF_TOPICS = ('/tf',)
STATIC_TF_TOPICS = ('/tf_static',)
#: Where our recordings keep the true map -> odom, off ``/tf`` so that replaying ``/tf`` to the
#: node gives ``odom`` no second parent: dynamic since the rendered odometry drifts
#: (``mspr_training.synth.rosbag_writer``), static in older recordings.
GROUND_TRUTH_TF_TOPIC = '/ground_truth/tf'
GROUND_TRUTH_STATIC_TF_TOPIC = '/ground_truth/tf_static'
NS_PER_S = 1_000_000_000
NODE_NAME = 'mspr_localizer'
#: The node's defaults of the parameters the evaluation needs to know (node_params.py).
NODE_DEFAULTS = {'global_frame_id': 'map', 'odom_frame_id': 'odom', 'base_frame_id': 'base_link',
                 'transform_tolerance': 0.5, 'camera_model': 'auto', 'camera_info_topic': ''}


@dataclass(frozen=True)
class GroundTruthSpec:
    """Where the ground truth of a bag comes from.

    Attributes:
        topic: a pose topic of the camera pose; None with ``frames`` None means "the default
            topic ``/ground_truth/camera_pose`` when the bag has it, else no ground truth".
        frames: ``(fixed_frame, moving_frame)`` TF pair instead of a topic.
        scene_topic: ``std_msgs/String`` topic naming the current scene; None means the default
            ``/ground_truth/scene`` when present. An explicitly named topic must exist.
        max_gap_ns: largest ground-truth gap an image stamp may be interpolated across.
        static_tf_topics: static TF topics composed with ``/tf`` for a frame pair; None means
            ``/tf_static`` plus ``/ground_truth/tf_static`` when the bag has it (where older
            recordings keep a constant ``map -> odom``). ``/ground_truth/tf`` (the true
            ``map -> odom`` of recordings with drifting odometry) is read with ``/tf`` whenever
            the bag has it.
        enabled: False ignores ground truth entirely (trajectory and latency only).
    """

    topic: str | None = None
    frames: tuple[str, str] | None = None
    scene_topic: str | None = None
    max_gap_ns: int = DEFAULT_MAX_GAP_NS
    static_tf_topics: tuple[str, ...] | None = None
    enabled: bool = True

    def __post_init__(self):
        """Reject a topic and a TF pair given together, or a malformed pair."""
        if self.topic is not None and self.frames is not None:
            raise ValueError('give either a ground-truth topic or a TF frame pair, not both')
        if self.frames is not None and len(self.frames) != 2:
            raise ValueError(f'ground-truth frames must be (fixed, moving), got {self.frames!r}')
        if self.max_gap_ns <= 0:
            raise ValueError(f'max_gap_ns must be positive, got {self.max_gap_ns}')


@dataclass(frozen=True, eq=False)
class SceneTimeline:
    """Scene names announced on a ``std_msgs/String`` topic, by bag receive time."""

    times_ns: np.ndarray
    names: tuple[str, ...]

    def at(self, stamps_ns: Sequence[int]) -> list[str | None]:
        """Return the latest scene announced at or before each stamp (None before the first)."""
        latest = np.searchsorted(self.times_ns, np.asarray(stamps_ns, np.int64), side='right') - 1
        return [self.names[i] if i >= 0 else None for i in latest]


@dataclass(frozen=True, eq=False)
class GroundTruth:
    """Ground truth of one bag.

    Attributes:
        trajectory: poses of the compared frame in ``trajectory.frame_id``.
        source: human-readable origin (``topic /x`` or ``tf map -> base_link``).
        child_frame: the moving frame of a TF pair; None for a camera-pose topic.
        scenes: the scene timeline, or None when the bag announces no scene.
        max_gap_ns: interpolation gap limit.
    """

    trajectory: Trajectory | None
    source: str | None
    child_frame: str | None
    scenes: SceneTimeline | None
    max_gap_ns: int = DEFAULT_MAX_GAP_NS


def bag_topics(bag_path) -> dict[str, str]:
    """Return ``{topic: message type}`` of a bag; DatasetError if it cannot be opened."""
    with open_bag(bag_path) as reader:
        return {c.topic: c.msgtype for c in reader.connections}


def read_scene_timeline(bag_path, topic) -> SceneTimeline:
    """Read a ``std_msgs/String`` scene topic; DatasetError on a wrong type or corrupt message."""
    times, names = [], []
    with open_bag(bag_path) as reader:
        connections = [c for c in reader.connections if c.topic == topic]
        if not connections:
            raise DatasetError(f'{bag_path}: no scene topic {topic!r}')
        for connection in connections:
            if connection.msgtype != STRING_TYPE:
                raise DatasetError(f'{bag_path}: scene topic {topic!r} has type '
                                   f'{connection.msgtype}, expected {STRING_TYPE}')
        for connection, log_time, raw in reader.messages(connections=connections):
            try:
                names.append(str(reader.deserialize(raw, connection.msgtype).data))
            except Exception as error:  # rosbags raises several types for corrupt messages
                raise DatasetError(f'{bag_path}: corrupt message on {topic!r} at {log_time} ns: '
                                   f'{error}') from error
            times.append(int(log_time))
    order = np.argsort(np.asarray(times, dtype=np.int64), kind='stable')
    return SceneTimeline(np.asarray(times, np.int64)[order], tuple(names[i] for i in order))


def load_ground_truth(bag_path, spec: GroundTruthSpec) -> GroundTruth:
    """Read the ground truth a spec asks for (an empty GroundTruth when there is none).

    Raises:
        DatasetError: an explicitly named topic or frame is missing, or ground truth is corrupt.
    """
    empty = GroundTruth(None, None, None, None, spec.max_gap_ns)
    if not spec.enabled:
        return empty
    topics = bag_topics(bag_path)
    scene_topic = spec.scene_topic
    if scene_topic is None and DEFAULT_SCENE_TOPIC in topics:
        scene_topic = DEFAULT_SCENE_TOPIC
    scenes = read_scene_timeline(bag_path, scene_topic) if scene_topic else None
    if spec.frames is not None:
        fixed, moving = spec.frames
        static_topics = spec.static_tf_topics
        if static_topics is None:
            static_topics = STATIC_TF_TOPICS + tuple(
                t for t in (GROUND_TRUTH_STATIC_TF_TOPIC,) if t in topics)
        tf_topics = TF_TOPICS + tuple(t for t in (GROUND_TRUTH_TF_TOPIC,) if t in topics)
        trajectory = read_bag_trajectory(bag_path, frames=(fixed, moving),
                                         max_gap_ns=spec.max_gap_ns, tf_topics=tf_topics,
                                         static_tf_topics=static_topics)
        used = ', '.join(tf_topics + tuple(static_topics))
        return GroundTruth(trajectory, f'tf {fixed} -> {moving} ({used})', moving.lstrip('/'),
                           scenes, spec.max_gap_ns)
    topic = spec.topic
    if topic is None:
        if DEFAULT_GT_TOPIC not in topics:
            LOGGER.warning('%s: no ground truth (no %s topic and no --gt-topic/--gt-frames): '
                           'reporting trajectory and timing only', bag_path, DEFAULT_GT_TOPIC)
            return replace(empty, scenes=scenes)
        topic = DEFAULT_GT_TOPIC
    trajectory = read_bag_trajectory(bag_path, pose_topic=topic)
    return GroundTruth(trajectory, f'topic {topic}', None, scenes, spec.max_gap_ns)


def read_bag_transforms(bag_path) -> TransformBuffer:
    """Return every ``/tf`` and ``/tf_static`` transform of a bag in a ``TransformBuffer``.

    Used to look up the camera extrinsic at an image stamp. A bag without TF gives an empty
    buffer (lookups then fail with a message naming the frames). One reader for all bag tools:
    ``mspr_training.data.rosbag.read_transforms``.

    Raises:
        DatasetError: a corrupt TF message or an inconsistent tree (two parents, a cycle).
    """
    return read_transforms(bag_path, TF_TOPICS, STATIC_TF_TOPICS, required=False)[0]


def default_params_file() -> Path | None:
    """Return the node's shipped ``config/mspr_ros.yaml`` (source checkout or install), if any."""
    package_root = Path(mspr_ros.__file__).resolve().parent
    for candidate in (package_root.parent / 'config' / 'mspr_ros.yaml',
                      Path(sys.prefix) / 'share' / 'mspr_ros' / 'config' / 'mspr_ros.yaml'):
        if candidate.is_file():
            return candidate
    return None


def _flatten(values, prefix=''):
    """Flatten nested parameter dicts into dotted names, as rcl does."""
    flat = {}
    for key, value in values.items():
        name = f'{prefix}{key}'
        if isinstance(value, dict):
            flat.update(_flatten(value, name + '.'))
        else:
            flat[name] = value
    return flat


def read_node_parameters(params_file, node_name=NODE_NAME, overrides=None) -> dict:
    """Return the node's parameters from an rcl YAML file plus ``overrides`` (YAML text values).

    Blocks for ``/**``, ``/**/<node>``, ``<node>`` and ``/<node>`` apply, in that order. Only used
    to know the frames and tolerances the node will use; the node reads the file itself.

    Raises:
        ValueError: naming the file when it is not an rcl parameter file.
    """
    values = dict(NODE_DEFAULTS)
    if params_file is not None:
        try:
            document = yaml.safe_load(Path(params_file).read_text()) or {}
        except (OSError, yaml.YAMLError) as error:
            raise ValueError(f'{params_file}: cannot read node parameters: {error}') from error
        if not isinstance(document, dict):
            raise ValueError(f'{params_file}: expected a mapping of node names')
        for key in ('/**', f'/**/{node_name}', node_name, f'/{node_name}'):
            block = document.get(key)
            if isinstance(block, dict) and isinstance(block.get('ros__parameters'), dict):
                values.update(_flatten(block['ros__parameters']))
    for name, text in (overrides or {}).items():
        values[name] = yaml.safe_load(text)
    return values


def alignment_overrides(parameters: dict) -> dict:
    """Return ``{scene: alignment dict}`` from ``scenes.<name>.map_from_scene`` parameters."""
    overrides = {}
    for name, value in parameters.items():
        scene = alignment_parameter_scene(name)
        if scene is None:
            continue
        # The node's own parser (in the core), so a value the node accepts means the same here.
        try:
            overrides[scene] = SceneAlignment.from_parameter(value).to_dict()
        except ValueError as error:
            raise ValueError(f'{name} {error}') from None
    return overrides


def scene_alignments(localizer, overrides=None) -> dict[str, SceneAlignment]:
    """Return ``map <- scene`` per scene: the bundle's, replaced by ``overrides`` where given.

    ``overrides`` maps scene names to ``{translation, rotation_xyzw, scale}`` dicts (e.g. the
    node's ``scenes.<name>.map_from_scene`` parameters), so offline and live agree.
    """
    alignments = {}
    bundle = localizer.bundle
    for name in localizer.scene_names:
        value = (overrides or {}).get(name)
        if value is None:
            value = bundle.scene_alignment[name].to_dict()
        alignments[name] = SceneAlignment.from_dict(value, context=f'{bundle.path}: scene {name}')
    return alignments


def camera_selection(bag_path, image_topic: str, localizer, parameters: dict
                     ) -> CameraSelection | None:
    """Return the node's ``camera_model`` rule fed with the bag's ``camera_info``, as it runs.

    None for a localizer without cameras (a stand-in in tests) or ``camera_model: ignore``.
    """
    mode = parameters.get('camera_model', 'auto')
    if mode == 'ignore' or not hasattr(localizer, 'training_camera_problem'):
        return None
    cameras = read_bag_cameras(bag_path, image_topic, parameters.get('camera_info_topic') or None)
    selection = CameraSelection(mode, cameras.topic, localizer.training_camera_problem,
                                lambda camera: localizer.reprojection(camera).coverage,
                                MIN_COVERAGE)
    for stamp_ns, camera in zip(cameras.stamps_ns, cameras.cameras):
        selection.offer(int(stamp_ns), camera)
    return selection


def localize_images(images: Iterable, localizer, alignments, progress: bool = False,
                    total: int | None = None, cameras: CameraSelection | None = None
                    ) -> list[FrameRecord]:
    """Run the localizer on decoded bag images (``BagImage``) and place each estimate in the map.

    Undecodable images become ``BAD_IMAGE`` records carrying the decoder's reason; an image the
    ``cameras`` rule rejects (``camera_model: require`` without a fitting ``camera_info``) a
    ``DROPPED`` record with the reason, as the node answers nothing; every other image becomes
    an ``ANSWERED`` record with ``T_map_cam``, the scene, its confidence and the time
    ``localize`` took (``latency_ms``, the reprojection included).
    """
    records = []
    for index, image in enumerate(tqdm(images, total=total, disable=not progress,
                                       desc='localize', unit='img')):
        if image.rgb is None:
            records.append(FrameRecord(index, image.stamp_ns, image.frame_id,
                                       FrameStatus.BAD_IMAGE, error=image.error))
            continue
        started = time.perf_counter()
        camera = None
        if cameras is not None:
            decision = cameras.decide(image.stamp_ns, image.rgb.shape[1], image.rgb.shape[0])
            if decision.reject:
                records.append(FrameRecord(index, image.stamp_ns, image.frame_id,
                                           FrameStatus.DROPPED, error=decision.status))
                continue
            camera = decision.camera
        result = (localizer.localize(image.rgb) if camera is None
                  else localizer.localize(image.rgb, camera))
        latency_ms = (time.perf_counter() - started) * 1e3
        T_map_cam = alignments[result.scene_name].apply(
            Transform(result.position, result.orientation)).canonical()
        records.append(FrameRecord(
            index, image.stamp_ns, image.frame_id, FrameStatus.ANSWERED,
            scene=result.scene_name, scene_confidence=float(result.scene_confidence),
            camera_position=np.array(T_map_cam.translation),
            camera_orientation=np.array(T_map_cam.rotation),
            scene_position=np.array(result.position, dtype=float),
            scene_orientation=np.array(result.orientation, dtype=float), latency_ms=latency_ms))
    return records


def _estimate_of(record: FrameRecord, child_frame, base_frame, transforms):
    """Return the estimated pose of the ground truth's frame for one answered record."""
    camera = Transform(record.camera_position, record.camera_orientation)
    if child_frame is None or child_frame == record.frame_id.lstrip('/'):
        return camera
    if child_frame == base_frame and record.base_position is not None:
        return Transform(record.base_position, record.base_orientation)
    if transforms is None:
        raise LookupError(f'no TF to relate camera frame {record.frame_id!r} to '
                          f'{child_frame!r}')
    return camera @ transforms.lookup(record.frame_id, child_frame, record.stamp_ns)


def match_ground_truth(records: list[FrameRecord], ground_truth: GroundTruth,
                       transforms: TransformBuffer | None = None,
                       base_frame: str | None = None) -> list[FrameRecord]:
    """Attach interpolated ground truth (and the compared estimate) to each record by stamp.

    The compared estimate is the camera pose for camera ground truth, the node's base pose when
    the ground truth's frame is ``base_frame`` and the record carries one, else the camera pose
    composed with ``T_cam_child`` from ``transforms`` at the image stamp. Records without valid
    ground truth get ``gt_error`` saying why (outside the range, a gap, a missing transform).

    Returns:
        New records (inputs are not modified).
    """
    if not records:
        return []
    stamps = np.array([r.stamp_ns for r in records], dtype=np.int64)
    scenes = (ground_truth.scenes.at(stamps) if ground_truth.scenes is not None
              else [None] * len(records))
    trajectory = ground_truth.trajectory
    if trajectory is not None:
        positions, orientations, valid = trajectory.interpolate(stamps, ground_truth.max_gap_ns)
        first, last = trajectory.stamps_ns[0], trajectory.stamps_ns[-1]
    matched = []
    for i, record in enumerate(records):
        record = replace(record, gt_scene=scenes[i])
        if trajectory is None or record.status != FrameStatus.ANSWERED:
            matched.append(record)
            continue
        if not valid[i]:
            where = ('outside the ground-truth time range' if not first <= stamps[i] <= last
                     else 'inside a ground-truth gap longer than '
                          f'{ground_truth.max_gap_ns / 1e9:.3f} s')
            matched.append(replace(record, gt_error=where))
            continue
        try:
            estimate = _estimate_of(record, ground_truth.child_frame, base_frame, transforms)
        except LookupError as error:
            matched.append(replace(record, gt_error=str(error)))
            continue
        estimate = estimate.canonical()
        matched.append(replace(
            record, gt_position=positions[i], gt_orientation=orientations[i],
            position=np.array(estimate.translation), orientation=np.array(estimate.rotation)))
    return matched


def count_messages(bag_path, topic) -> int:
    """Return the number of messages recorded on ``topic`` (0 if absent)."""
    with open_bag(bag_path) as reader:
        return sum(c.msgcount for c in reader.connections if c.topic == topic)


def needs_transforms(ground_truth: GroundTruth) -> bool:
    """Return whether comparing against this ground truth may need the bag's TF tree."""
    return ground_truth.trajectory is not None and ground_truth.child_frame is not None


def evaluate_offline(bag_path, localizer, image_topic: str = DEFAULT_IMAGE_TOPIC,
                     ground_truth: GroundTruthSpec = GroundTruthSpec(),
                     alignment_overrides=None, global_frame: str = 'map',
                     progress: bool = False, weights: str | None = None,
                     parameters: dict | None = None) -> BagEvaluation:
    """Evaluate a localizer on every image of a bag.

    Args:
        bag_path: rosbag2 folder (mcap or sqlite3) or storage file.
        localizer: a ``mspr_ros.localizer.Localizer`` (or anything with ``localize``,
            ``scene_names`` and ``bundle.scene_alignment``/``bundle.path``).
        image_topic: ``sensor_msgs/Image`` or ``CompressedImage`` topic.
        ground_truth: where ground truth comes from.
        alignment_overrides: per-scene alignment dicts replacing the bundle's.
        global_frame: the map frame the estimates are expressed in (reported).
        progress: show a tqdm progress bar.
        weights: weights path for the report (default: the bundle's path).
        parameters: the node's parameters (``read_node_parameters``; None: its defaults), for
            the frames, fusion and covariance of the per-frame vs fused comparison, and
            ``camera_model`` / ``camera_info_topic``: images are read with the bag's
            ``camera_info`` by the node's rule (:func:`camera_selection`).

    Raises:
        DatasetError: unreadable bag, missing image topic, or bad/missing requested ground truth.
    """
    bag_path = Path(bag_path)
    parameters = {**NODE_DEFAULTS, **(parameters or {})}
    gt = load_ground_truth(bag_path, ground_truth)
    transforms = read_bag_transforms(bag_path) if gt.trajectory is not None else None
    if hasattr(localizer, 'warmup'):
        localizer.warmup()  # as the node does at configure: the first frame is not timed cold
    alignments = scene_alignments(localizer, alignment_overrides)
    cameras = camera_selection(bag_path, image_topic, localizer, parameters)
    records = localize_images(iter_bag_images(bag_path, image_topic), localizer, alignments,
                              progress, count_messages(bag_path, image_topic), cameras)
    records = match_ground_truth(records, gt, transforms)
    fusion, notes = fused_block(records, gt, transforms, localizer, alignments, parameters,
                                gt.child_frame or 'camera')
    return BagEvaluation(
        mode='offline', bag=str(bag_path),
        weights=str(weights if weights is not None else localizer.bundle.path),
        image_topic=image_topic, global_frame=global_frame, frames=records,
        ground_truth_source=gt.source,
        ground_truth_frame=gt.trajectory.frame_id if gt.trajectory is not None else None,
        compared_frame=gt.child_frame or 'camera',
        latency_kind='inference', device=str(getattr(localizer, 'device', '')), notes=notes,
        fusion=fusion)
