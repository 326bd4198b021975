"""Live rosbag evaluation: replay a recording over DDS through the node and record its outputs.

``LiveSession`` starts the node (console script ``localizer``) in its own process group with the
parameters of ``config/mspr_ros.yaml`` (or ``--params``) plus ``weights``, ``use_sim_time:=true``
and the image topic remapped to the bag's; every process gets
the Fast DDS image profile (``mspr_ros.runtime.dds_profile``: images through shared memory).
It waits until
the node's lifecycle state is ``active`` and its subscriptions are matched, then ``play`` replays
the bag at its recorded rate (times ``rate``): ``/clock`` (rosgraph_msgs/Clock) from the bag's
receive times, the image topic, ``/tf`` and ``/tf_static`` republished byte for byte as recorded.
An rclpy recorder in this process (``mspr_training.bags.live_recorder``) collects what the node
publishes: ``~/pose``, ``~/pose_raw``, ``~/pose_update`` (when the node has it),
``~/camera_pose``, ``~/scene``, ``~/scene_confidence``, ``map -> odom`` on ``/tf`` and
``/diagnostics``.

Scoring, per image:

- answered: a ``~/camera_pose`` or ``~/pose`` with the image's header stamp arrived. End-to-end
  latency = wall time of that arrival minus wall time just before the image was published (both
  measured in this process on the monotonic clock).
- bad_image: no answer and the image cannot be decoded (the same decoder as offline says why).
- dropped: published, decodable, never answered. The node keeps only the newest frame by design
  (a slow model skips frames rather than lag behind), and gating may reject frames; the node's
  last ``/diagnostics`` (superseded and rejected counts by reason) is kept in the report to tell
  the two apart. Accounting: ``images == answered + dropped + bad_images``.

``~/scene`` carries no stamp: each answered frame takes the last scene (and confidence) message
that arrived before its pose, as the node publishes them just before the pose of the same frame.

Per-frame vs fused (with ground truth and ``fusion: window``): ``~/pose_raw`` (each frame's own
estimate) and ``~/pose`` (fused) of the same stamps are moved to the ground truth's frame with
the bag's TF and compared as offline (``mspr_training.bags.fusion_compare``); ``~/pose_update``
(what an EKF gets) is counted and scored beside them, or said absent on an older node. The
fusion's settings and the error correlation model of each scene are stated as the node's
parameters and the bundle resolve them (``mspr_training.bags.fusion_replay.fusion_config``).

Successive ``play`` calls in one session reuse the node; their bags must have increasing stamps
(sim time must not jump back, or the node's TF buffer rejects the older transforms).
"""
import bisect
from dataclasses import dataclass, field, replace
import logging
import os
from pathlib import Path
import signal
import subprocess
import sys
import tempfile
import threading
import time

from builtin_interfaces.msg import Time
from lifecycle_msgs.srv import GetState
import numpy as np
import rclpy
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from rclpy.signals import SignalHandlerOptions
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from tf2_msgs.msg import TFMessage
from tqdm import tqdm

import mspr_ros
from mspr_ros.bundle import load_bundle
from mspr_ros.camera.topics import camera_info_topic
from mspr_ros.geometry.transforms import Transform
from mspr_ros.runtime.dds_profile import with_image_profile
from mspr_training.bags.fusion_compare import node_comparison
from mspr_training.bags.fusion_replay import correlation_report, fusion_config
from mspr_training.bags.live_recorder import OutputRecorder, pose_transform, stamp_ns
from mspr_training.bags.offline import (count_messages, GroundTruthSpec, load_ground_truth,
                                        match_ground_truth, NODE_NAME,
                                        read_bag_transforms, read_node_parameters,
                                        STATIC_TF_TOPICS, TF_TOPICS)
from mspr_training.bags.report import BagEvaluation, FrameRecord, FrameStatus
from mspr_training.data.rosbag import COMPRESSED_TYPE, IMAGE_TYPE, iter_bag_images, open_bag
from mspr_training.data.samples import DatasetError

LOGGER = logging.getLogger(__name__)

NS_PER_S = 1_000_000_000
#: How often /clock advances between recorded messages (ros2 bag play --clock uses 40 Hz).
CLOCK_HZ = 40.0
#: Scenes pair with frames by stamp (``~/scene_camera_pose``); for a node without that topic, by
#: arrival: a pose and the scene message of the same frame are published back to back, and this
#: much reordering between the two topics is allowed.
SCENE_PAIRING_SLACK_S = 0.005
#: Wall time to wait for the node's /diagnostics after the bag (it reports every second of
#: sim time by default), and how fast sim time runs meanwhile.
DIAGNOSTICS_TIMEOUT_S = 5.0
DIAGNOSTICS_CLOCK_SPEED = 2.0
IMAGE_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
CLOCK_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)
TF_QOS = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)


class LiveEvaluationError(RuntimeError):
    """The node could not be started or driven; the message includes the end of its log."""


@dataclass(frozen=True)
class LiveOptions:
    """How to run the node for a live evaluation.

    Attributes:
        weights: the weights bundle the node loads.
        params_file: node parameter YAML (None: the node's defaults).
        parameters: extra ``name -> value`` overrides, values as YAML text (``-p name:=value``).
        device: the node's ``device`` parameter.
        domain_id: ROS domain of the node and the player (None: ``ROS_DOMAIN_ID`` or 0).
        node_command: the node executable (None: the ``localizer`` console script next to this
            Python, else ``python -m mspr_ros.ros.node``).
        startup_timeout_s: time for the node to import torch, load the bundle and activate.
        settle_timeout_s: after the last image, wait for outputs until none came for this long.
        node_log: file receiving the node's output (None: a temporary file).
    """

    weights: Path
    params_file: Path | None = None
    parameters: dict[str, str] = field(default_factory=dict)
    device: str = 'auto'
    domain_id: int | None = None
    node_command: tuple[str, ...] | None = None
    startup_timeout_s: float = 120.0
    settle_timeout_s: float = 3.0
    node_log: Path | None = None


def _yaml_text(value: str) -> str:
    """Quote a string as a YAML scalar for ``-p name:=value``."""
    return "'" + str(value).replace("'", "''") + "'"


def node_command_line(options: LiveOptions, node_name: str, image_topic: str,
                      compressed: bool) -> list[str]:
    """Return the command that starts the node for a bag whose images are on ``image_topic``."""
    command = list(options.node_command or ())
    if not command:
        script = Path(sys.executable).with_name('localizer')
        command = ([str(script)] if script.is_file()
                   else [sys.executable, '-m', 'mspr_ros.ros.node'])
    command += ['--ros-args', '-r', f'__node:={node_name}']
    if options.params_file is not None:
        command += ['--params-file', str(options.params_file)]
    subscribed = 'image/compressed' if compressed else 'image'
    params = {'weights': _yaml_text(Path(options.weights).resolve()),
              'device': _yaml_text(options.device),
              'image_transport': _yaml_text('compressed' if compressed else 'raw'),
              'use_sim_time': 'true', 'autostart': 'true', **options.parameters}
    for name, text in params.items():
        command += ['-p', f'{name}:={text}']
    return command + ['-r', f'{subscribed}:={image_topic}']


def node_environment(domain_id: int | None) -> dict:
    """Return the node's environment: ours plus the image profile, the domain and our mspr_ros."""
    env = with_image_profile(dict(os.environ))
    if domain_id is not None:
        env['ROS_DOMAIN_ID'] = str(domain_id)
    # The child must import the same mspr_ros as this process, wherever it is started from.
    package_parent = str(Path(mspr_ros.__file__).resolve().parents[1])
    env['PYTHONPATH'] = os.pathsep.join(filter(None, [package_parent,
                                                      env.get('PYTHONPATH', '')]))
    return env


class _Timeline:
    """``(arrival, value)`` events sorted by arrival, to look up the latest one at a time."""

    def __init__(self, events):
        events = sorted(events, key=lambda event: event[0])
        self._times = [arrival for arrival, _ in events]
        self._values = [value for _, value in events]

    def latest(self, when):
        """Return the value of the last event at or before ``when`` (None before the first)."""
        index = bisect.bisect_right(self._times, when) - 1
        return self._values[index] if index >= 0 else None


class LiveSession:
    """The node under test plus an rclpy player/recorder; use as a context manager."""

    def __init__(self, options: LiveOptions, image_topic: str, compressed: bool,
                 node_name: str = NODE_NAME):
        """Prepare (nothing starts before ``__enter__``)."""
        self.options = options
        self.image_topic = image_topic
        self.compressed = compressed
        self.node_name = node_name
        self.params = read_node_parameters(options.params_file, node_name, options.parameters)
        self.process = None
        self._context = None
        self._executor = None
        self._spin_thread = None
        self._log_handle = None
        self._log_path = options.node_log

    # -------------------------------------------------------------- start and stop

    def __enter__(self):
        """Start rclpy, the recorder and the node; wait until the node is active and matched."""
        with_image_profile()
        try:
            self._start_ros()
            self._start_node()
            self._wait_active()
            self._wait_matched()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info):
        """Stop the node and rclpy."""
        self.close()

    def _start_ros(self):
        self._context = Context()
        rclpy.init(context=self._context, domain_id=self.options.domain_id,
                   signal_handler_options=SignalHandlerOptions.NO)
        self.node = rclpy.create_node('mspr_bag_player', context=self._context)
        self.recorder = OutputRecorder(self.node, self.node_name, self.params)
        image_type = CompressedImage if self.compressed else Image
        self.image_publisher = self.node.create_publisher(image_type, self.image_topic, IMAGE_QOS)
        # The bag's camera_info, where the node looks for it (beside the image topic, or its
        # camera_info_topic parameter), so the node reads the images as on the robot.
        self.camera_info_topic = (str(self.params.get('camera_info_topic') or '')
                                  or camera_info_topic(self.image_topic))
        self.camera_info_publisher = self.node.create_publisher(
            CameraInfo, self.camera_info_topic, IMAGE_QOS)
        self.clock_publisher = self.node.create_publisher(Clock, '/clock', CLOCK_QOS)
        self.tf_publisher = self.node.create_publisher(TFMessage, '/tf', TF_QOS)
        self._static_publishers = {}
        self._executor = SingleThreadedExecutor(context=self._context)
        self._executor.add_node(self.node)
        self._spin_thread = threading.Thread(target=self._spin, name='mspr_bag_recorder',
                                             daemon=True)
        self._spin_thread.start()

    def _spin(self):
        try:
            self._executor.spin()
        except Exception:  # noqa: BLE001 - the context is shut down under the spinning thread
            pass

    def _start_node(self):
        if self._log_path is None:
            handle, name = tempfile.mkstemp(prefix='mspr_localizer_', suffix='.log')
            os.close(handle)
            self._log_path = Path(name)
        self._log_handle = open(self._log_path, 'w')
        command = node_command_line(self.options, self.node_name, self.image_topic,
                                    self.compressed)
        LOGGER.info('starting the node: %s', ' '.join(command))
        self.process = subprocess.Popen(
            command, env=node_environment(self.options.domain_id), stdout=self._log_handle,
            stderr=subprocess.STDOUT, start_new_session=True)

    def node_log(self, tail_chars=4000) -> str:
        """Return the end of the node's output."""
        try:
            return Path(self._log_path).read_text(errors='replace')[-tail_chars:]
        except (OSError, TypeError):
            return ''

    def _failure(self, text):
        return LiveEvaluationError(f'{text}\n--- node log ({self._log_path}) ---\n'
                                   f'{self.node_log()}')

    def _wait_active(self):
        client = self.node.create_client(GetState, f'/{self.node_name}/get_state')
        deadline = time.monotonic() + self.options.startup_timeout_s
        try:
            while True:
                if self.process.poll() is not None:
                    raise self._failure(f'the node exited with code {self.process.returncode} '
                                        'before becoming active')
                if time.monotonic() > deadline:
                    raise self._failure(f'the node was not active after '
                                        f'{self.options.startup_timeout_s:.0f} s')
                if not client.wait_for_service(timeout_sec=0.5):
                    continue
                label = self._call_get_state(client, deadline)
                if label == 'active':
                    return
                # The node logs this when configure returns FAILURE; it then stays unconfigured.
                if label is not None and 'configure failed' in self.node_log():
                    raise self._failure(f'the node could not be configured (state {label})')
                time.sleep(0.2)
        finally:
            self.node.destroy_client(client)

    @staticmethod
    def _call_get_state(client, deadline):
        future = client.call_async(GetState.Request())
        done = threading.Event()
        future.add_done_callback(lambda _: done.set())
        if not done.wait(max(0.1, min(5.0, deadline - time.monotonic()))):
            return None
        return future.result().current_state.label

    def _wait_matched(self, timeout_s=20.0):
        """Wait until the node subscribes to our topics and we to its outputs."""
        checks = {
            f'the node subscribing to {self.image_topic}':
                lambda: self.image_publisher.get_subscription_count() > 0,
            'the node subscribing to /clock':
                lambda: self.clock_publisher.get_subscription_count() > 0,
            # Our own recorder is one /tf subscriber; the node's TF listener is the other.
            'the node subscribing to /tf':
                lambda: self.tf_publisher.get_subscription_count() > 1,
            'the node publishing ~/camera_pose':
                lambda: self.recorder.subscriptions['camera_pose'].get_publisher_count() > 0,
            'the node publishing ~/pose':
                lambda: self.recorder.subscriptions['pose'].get_publisher_count() > 0,
        }
        deadline = time.monotonic() + timeout_s
        for what, check in checks.items():
            while not check():
                if time.monotonic() > deadline:
                    raise self._failure(f'timed out after {timeout_s:.0f} s waiting for {what}')
                time.sleep(0.02)

    def close(self):
        """Stop the node (SIGINT, then SIGKILL after 15 s) and shut rclpy down (idempotent)."""
        if self.process is not None and self.process.poll() is None:
            _stop_process_group(self.process)
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None
        if self._executor is not None:
            self._executor.shutdown()
            self._spin_thread.join(10.0)
            self.node.destroy_node()
            self._executor = None
        if self._context is not None:
            self._context.try_shutdown()
            self._context = None

    # -------------------------------------------------------------- playback

    def _static_publisher(self, count):
        # Transient local with every recorded static message kept, so that a late subscriber
        # still gets them all (tf2's static broadcaster latches one accumulated message).
        depth = max(1, count)
        publisher = self._static_publishers.get(depth)
        if publisher is None:
            qos = QoSProfile(depth=depth, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
            publisher = self.node.create_publisher(TFMessage, STATIC_TF_TOPICS[0], qos)
            self._static_publishers[depth] = publisher
        return publisher

    def _publish_clock(self, stamp_ns):
        seconds, nanoseconds = divmod(int(stamp_ns), NS_PER_S)
        self.clock_publisher.publish(Clock(clock=Time(sec=seconds, nanosec=nanoseconds)))

    def _sleep_until(self, target, bag_origin_ns, wall_origin, rate, clock_ns):
        """Sleep until wall time ``target``, advancing /clock at CLOCK_HZ meanwhile."""
        while True:
            now = time.monotonic()
            if now >= target:
                return clock_ns
            tick = min(target, now + 1.0 / CLOCK_HZ)
            time.sleep(tick - now)
            if tick < target:
                bag_now = bag_origin_ns + int((time.monotonic() - wall_origin) * rate * NS_PER_S)
                if bag_now > clock_ns:
                    clock_ns = bag_now
                    self._publish_clock(clock_ns)

    def _replay(self, bag_path, rate, progress):
        """Replay images, their camera_info, /tf and /tf_static.

        Returns:
            per image (stamp, wall time of publishing or None when not sent), and the last
            /clock value published.
        """
        published = []
        with open_bag(bag_path) as reader:
            image_connections = [c for c in reader.connections if c.topic == self.image_topic]
            camera_connections = [c for c in reader.connections
                                  if c.topic == self.camera_info_topic]
            tf_connections = [c for c in reader.connections if c.topic in TF_TOPICS]
            static_connections = [c for c in reader.connections if c.topic in STATIC_TF_TOPICS]
            static = self._static_publisher(sum(c.msgcount for c in static_connections))
            connections = (image_connections + camera_connections + tf_connections
                           + static_connections)
            bar = tqdm(total=sum(c.msgcount for c in image_connections), disable=not progress,
                       desc=f'replay x{rate:g}', unit='img')
            bag_origin = wall_origin = clock_ns = None
            for connection, log_time, raw in reader.messages(connections=connections):
                if bag_origin is None:
                    bag_origin, wall_origin = int(log_time), time.monotonic() + 0.05
                    clock_ns = bag_origin - 1
                target = wall_origin + (int(log_time) - bag_origin) / NS_PER_S / rate
                clock_ns = self._sleep_until(target, bag_origin, wall_origin, rate, clock_ns)
                if int(log_time) > clock_ns:
                    clock_ns = int(log_time)
                    self._publish_clock(clock_ns)
                if connection.topic in STATIC_TF_TOPICS:
                    static.publish(bytes(raw))
                elif connection.topic in TF_TOPICS:
                    self.tf_publisher.publish(bytes(raw))
                elif connection.topic == self.camera_info_topic:
                    self.camera_info_publisher.publish(bytes(raw))
                else:
                    published.append(self._publish_image(reader, connection, log_time, raw))
                    bar.update()
            bar.close()
        return published, clock_ns

    def _publish_image(self, reader, connection, log_time, raw):
        """Publish one recorded image as is; return (stamp, wall time) or (log time, None)."""
        try:
            header = reader.deserialize(raw, connection.msgtype).header
        except Exception:  # noqa: BLE001 - corrupt bytes: counted as a bad image, not sent
            return int(log_time), None
        stamp = stamp_ns(header.stamp) or int(log_time)
        sent = time.monotonic()
        self.image_publisher.publish(bytes(raw))
        return stamp, sent

    def play(self, bag_path, ground_truth: GroundTruthSpec = GroundTruthSpec(),
             rate: float = 1.0, progress: bool = False) -> BagEvaluation:
        """Replay one bag through the node and score what it published (module docstring).

        Raises:
            DatasetError: unreadable bag, wrong image topic, bad requested ground truth.
            LiveEvaluationError: the node died during the replay.
        """
        if not rate > 0:
            raise ValueError(f'rate must be positive, got {rate}')
        bag_path = Path(bag_path)
        gt = load_ground_truth(bag_path, ground_truth)
        # Also for camera ground truth: the fused base pose is moved to the camera with it.
        transforms = read_bag_transforms(bag_path) if gt.trajectory is not None else None
        # What the offline decoder says about each image, to tell bad images from drops.
        decoded = [(image.stamp_ns, image.frame_id, image.error)
                   for image in iter_bag_images(bag_path, self.image_topic)]
        self.recorder.reset()
        published, clock_ns = self._replay(bag_path, rate, progress)
        if len(published) != len(decoded):
            raise DatasetError(f'{bag_path}: read {len(decoded)} images on {self.image_topic} '
                               f'but replayed {len(published)}')
        expected = {stamp for (stamp, sent), (_, _, error) in zip(published, decoded)
                    if sent is not None and error is None}
        last_publish = max((sent for _, sent in published if sent is not None),
                           default=time.monotonic())
        self.recorder.wait_idle(expected, last_publish, self.options.settle_timeout_s)
        self._await_diagnostics(clock_ns)
        if self.process.poll() is not None:
            raise self._failure(f'the node exited with code {self.process.returncode} during '
                                'the replay')
        records = self._records(published, decoded)
        records = match_ground_truth(records, gt, transforms, self.params['base_frame_id'])
        fusion, notes = self._fusion_block(records, gt, transforms)
        return self._evaluation(bag_path, records, gt, rate, fusion, notes)

    def _await_diagnostics(self, clock_ns, timeout_s=DIAGNOSTICS_TIMEOUT_S):
        """Advance /clock after the bag until the node sends /diagnostics once more.

        The node reports on a sim-time timer, so without this the last report would predate the
        end of the bag and its frame counts would be incomplete.
        """
        seen = self.recorder.diagnostics_count
        deadline = time.monotonic() + timeout_s
        step_ns = int(DIAGNOSTICS_CLOCK_SPEED * NS_PER_S / CLOCK_HZ)
        while self.recorder.diagnostics_count == seen and time.monotonic() < deadline:
            time.sleep(1.0 / CLOCK_HZ)
            clock_ns += step_ns
            self._publish_clock(clock_ns)

    def _records(self, published, decoded):
        recorder = self.recorder
        scenes = _Timeline(recorder.scenes)
        confidences = _Timeline(recorder.confidences)
        records = []
        for index, ((stamp, sent), (_, frame_id, error)) in enumerate(zip(published, decoded)):
            camera = recorder.camera_poses.get(stamp)
            base = recorder.poses.get(stamp)
            if camera is None and base is None:
                status = FrameStatus.BAD_IMAGE if error is not None else FrameStatus.DROPPED
                records.append(FrameRecord(index, stamp, frame_id, status, error=error,
                                           published=sent is not None))
                continue
            arrival = min(a for a, _ in (camera, base) if a is not None)
            values = {}
            if camera is not None:
                pose = pose_transform(camera[1])
                values.update(camera_position=np.array(pose.translation),
                              camera_orientation=np.array(pose.rotation))
            if base is not None:
                pose = pose_transform(base[1].pose)
                values.update(base_position=np.array(pose.translation),
                              base_orientation=np.array(pose.rotation),
                              covariance=np.asarray(base[1].covariance).reshape(6, 6))
            records.append(FrameRecord(
                index, stamp, frame_id, FrameStatus.ANSWERED, published=True,
                scene=(recorder.scene_by_stamp.get(stamp)
                       or scenes.latest(arrival + SCENE_PAIRING_SLACK_S)),
                scene_confidence=confidences.latest(arrival + SCENE_PAIRING_SLACK_S),
                latency_ms=(arrival - sent) * 1e3, **values))
        return self._with_map_odom(records)

    def _with_map_odom(self, records):
        """Mark the answered records whose map -> odom correction was broadcast."""
        tolerance_ns = int(round(float(self.params['transform_tolerance']) * NS_PER_S))
        answered = [i for i, r in enumerate(records) if r.status == FrameStatus.ANSWERED]
        sent = assign_corrections([records[i].stamp_ns for i in answered],
                                  self.recorder.map_odom_steps(), tolerance_ns)
        records = list(records)
        for i, flag in zip(answered, sent):
            records[i] = replace(records[i], map_odom=flag)
        return records

    def _fusion_block(self, records, gt, transforms) -> tuple[dict | None, list[str]]:
        """Return (per-frame vs fused of the node's outputs or None, notes on its absence)."""
        if gt.trajectory is None:
            return None, []
        bundle = load_bundle(self.options.weights)
        config = fusion_config(self.params, bundle)
        if config is None:
            return None, ['per-frame vs fused: absent, the node parameters say fusion: none']
        recorder, base = self.recorder, str(self.params['base_frame_id'])
        truth, missing = {}, []
        for record in records:
            if record.gt_position is None:
                continue
            child = (gt.child_frame or record.frame_id).lstrip('/')
            try:
                T_base_child = (Transform.identity() if child == base
                                else transforms.lookup(base, child, record.stamp_ns))
            except LookupError as error:
                missing.append(str(error))
                continue
            truth[record.stamp_ns] = (record.gt_position, record.gt_orientation, T_base_child)
        updates = None
        if recorder.publishes('pose_update'):
            updates = (_with_covariance(recorder.pose_updates), recorder.pose_update_count)
        rejected = {key.removeprefix('rejected '): int(value)
                    for key, value in recorder.diagnostics.items()
                    if key.startswith('rejected ') and value.isdigit() and int(value)}
        block = node_comparison(
            truth, _with_covariance(recorder.raw_poses),
            _with_covariance({stamp: msg for stamp, (_, msg) in recorder.poses.items()}),
            updates, compared_frame=gt.child_frame or 'camera', config=config,
            correlation=correlation_report(self.params, bundle), rejected=rejected)
        if block is None:
            reason = (f'no {base} -> {gt.child_frame or "camera"} transform ({missing[0]})'
                      if missing else 'no frame has ~/pose_raw, ~/pose and ground truth')
            return None, [f'per-frame vs fused: absent, {reason}']
        return block, []

    def _evaluation(self, bag_path, records, gt, rate, fusion, notes):
        answered = [r for r in records if r.status == FrameStatus.ANSWERED]
        notes = list(notes)
        if not answered and any(r.published for r in records):
            notes.append('the node answered no frame: it publishes only poses that pass its '
                         'gating (min_scene_confidence, jump limits); see the rejected counts '
                         'in the node diagnostics')
        missing_camera = sum(r.camera_position is None for r in answered)
        if missing_camera:
            notes.append(f'{missing_camera} answered frames have ~/pose but no ~/camera_pose')
        return BagEvaluation(
            mode='live', bag=str(bag_path), weights=str(self.options.weights),
            image_topic=self.image_topic, global_frame=str(self.params['global_frame_id']),
            frames=records, ground_truth_source=gt.source,
            ground_truth_frame=gt.trajectory.frame_id if gt.trajectory is not None else None,
            compared_frame=gt.child_frame or 'camera', latency_kind='end-to-end',
            device=self.recorder.diagnostics.get('device', self.options.device), rate=rate,
            node_diagnostics=dict(self.recorder.diagnostics),
            map_odom_frames=sum(bool(r.map_odom) for r in answered), notes=notes,
            fusion=fusion)


def _with_covariance(poses) -> dict:
    """Return stamp -> (``Transform``, 6x6 covariance) of ``geometry_msgs/PoseWithCovariance``."""
    return {stamp: (pose_transform(msg.pose), np.asarray(msg.covariance, float).reshape(6, 6))
            for stamp, msg in poses.items()}


def assign_corrections(image_stamps_ns, steps_ns, tolerance_ns) -> list[bool]:
    """Return, per answered image (in order), whether a new map -> odom correction was sent.

    Each correction is matched, in order, to the earliest image not yet matched whose stamp
    plus ``tolerance_ns`` is at or before the correction's stamp. AMCL's stamping rule gives a
    correction exactly ``image + tolerance``; the node moves it later only to keep its stamps
    increasing (a late frame), never earlier.
    """
    matched = [False] * len(image_stamps_ns)
    corrections = iter(sorted(steps_ns))
    correction = next(corrections, None)
    for index, stamp in enumerate(image_stamps_ns):
        while correction is not None and correction < stamp + tolerance_ns:
            correction = next(corrections, None)
        if correction is None:
            break
        matched[index] = True
        correction = next(corrections, None)
    return matched


def _stop_process_group(process, timeout_s=15.0):
    """SIGINT the node's process group, SIGKILL it if still alive after ``timeout_s``."""
    try:
        os.killpg(process.pid, signal.SIGINT)
        process.wait(timeout_s)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        LOGGER.warning('the node ignored SIGINT for %.0f s: killing it', timeout_s)
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        process.wait(timeout_s)


def image_topic_kind(bag_path, image_topic) -> bool:
    """Return True when ``image_topic`` is compressed; DatasetError if absent or not an image."""
    with open_bag(bag_path) as reader:
        types = {c.msgtype for c in reader.connections if c.topic == image_topic}
        topics = sorted({c.topic for c in reader.connections})
    if not types:
        raise DatasetError(f'{bag_path}: no topic {image_topic!r} (topics: {", ".join(topics)})')
    if not types <= {IMAGE_TYPE, COMPRESSED_TYPE} or len(types) != 1:
        raise DatasetError(f'{bag_path}: topic {image_topic!r} has type(s) {sorted(types)}, '
                           f'expected {IMAGE_TYPE} or {COMPRESSED_TYPE}')
    return types == {COMPRESSED_TYPE}


def evaluate_live(bag_path, options: LiveOptions, image_topic: str = '/camera/image_raw',
                  ground_truth: GroundTruthSpec = GroundTruthSpec(), rate: float = 1.0,
                  progress: bool = False) -> BagEvaluation:
    """Start the node, replay one bag through it, stop it; return the scored evaluation."""
    compressed = image_topic_kind(bag_path, image_topic)
    if count_messages(bag_path, image_topic) == 0:
        raise DatasetError(f'{bag_path}: topic {image_topic!r} holds no message')
    with LiveSession(options, image_topic, compressed) as session:
        return session.play(bag_path, ground_truth, rate, progress)
