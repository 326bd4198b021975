"""A node under measurement and this process's client: images out, poses and diagnostics in.

The node runs in its own process group on a free ROS domain (``mspr_training.node_process``, as
in the node tests), with the benchmark's torch thread count; the client
(``mspr_training.ros_client``) publishes the camera extrinsic and the images and records every
``~/pose`` arrival by stamp.
"""
import math
from pathlib import Path
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseWithCovarianceStamped
import numpy as np
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from tf2_msgs.msg import TFMessage

from common.arrivals import StampedArrivals
from common.process_memory import resident_bytes
from mspr_ros.geometry.transforms import Transform
from mspr_ros.ros.conversions import ns_to_stamp, rgb_to_image_msg, stamp_to_ns
from mspr_ros.ros.conversions import transform_to_msg
from mspr_ros.ros.diagnostics import LATENCY_WINDOW, STAGES
from mspr_ros.ros.node import IMAGE_QOS, NODE_NAME
from mspr_ros.ros.tf import TF_STATIC_PUBLISHER_QOS
from mspr_training.node_process import domain_id, NodeProcess, prepare_environment
from mspr_training.ros_client import diagnostic_values, own_status, RosClient

# This process talks to the node over the same transport as the node tests.
prepare_environment()

ECHO_PROGRAM = (sys.executable, str(Path(__file__).resolve().parents[1] / 'echo_node.py'))
CAMERA_FRAME = 'camera_optical'
# First domain offsets of the benchmarks (node_process.domain_id: pid-based ids in 1..101, as
# the tests draw theirs); a domain where another node is already visible is skipped.
DOMAIN_OFFSETS = {'latency_fusion_none': 80, 'latency': 85, 'echo': 90, 'stream': 95}
DOMAIN_ATTEMPTS = 5
# Long enough for localhost discovery to show a node already on the domain.
DOMAIN_PROBE_S = 1.5
# Camera 0.2 m ahead of and 0.5 m above the base, optical axis along the base's x axis.
BASE_TO_CAMERA = Transform.from_xyz_rpy([0.2, 0.0, 0.5], [-math.pi / 2, 0.0, -math.pi / 2])
# Publisher side of the node's ``image_qos: reliable`` subscription.
IMAGE_PUBLISHER_QOS = IMAGE_QOS['reliable']
# Every pose of a run is kept, also those that arrive while this process is busy.
POSE_QOS = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL)
# Importing torch and rclpy and loading the paper-size model on a busy 2-core machine.
START_TIMEOUT_S = 180.0


def node_parameters(weights: Path, device: str, precision: str = 'fp32',
                    **overrides: Any) -> Dict[str, Any]:
    """Return the node parameters of a benchmark run.

    Every frame must produce a pose (the benchmarks match poses to images by stamp), so the
    gate accepts any scene confidence; there is no odometry, so the node publishes
    ``map -> base_link`` directly. Everything else keeps the node's defaults.
    """
    params = {'weights': str(weights), 'device': device, 'precision': precision,
              'min_scene_confidence': 0.0, 'odom_frame_id': '', 'diagnostics_period': 0.5}
    params.update(overrides)
    return params


def stage_means(values: Dict[str, str]) -> Dict[str, float]:
    """Return the node's mean stage latencies (ms) from its diagnostics key-values."""
    stages = {}
    for stage in STAGES:
        key = f'{stage} latency mean (ms)'
        if key not in values:
            raise KeyError(f'the node diagnostics lack {key!r} (keys: {sorted(values)})')
        stages[stage] = float(values[key])
    return stages


def stage_means_of_measured(before: Dict[str, str], after: Dict[str, str],
                            measured: int) -> Tuple[Dict[str, float], int]:
    """Return the node's stage means over the measured frames and how many frames they cover.

    The node reports means over the last ``LATENCY_WINDOW`` of its timed frames (those that
    went through every stage; a warm-up frame rejected part-way, say for want of TF, is
    processed but not timed). When the timed warm-up and measured frames fit in that window,
    the warm-up part is subtracted out exactly; otherwise the last window is reported as is.

    Raises:
        RuntimeError: the node processed or timed other frames than the measured ones.
    """
    done_before, done_after = int(before['frames processed']), int(after['frames processed'])
    timed_before, timed_after = int(before['frames timed']), int(after['frames timed'])
    means_before, means_after = stage_means(before), stage_means(after)
    if done_after != done_before + measured or timed_after != timed_before + measured:
        raise RuntimeError(f'the node processed {done_after - done_before} frames and timed '
                           f'{timed_after - timed_before} while {measured} were measured')
    if timed_after > LATENCY_WINDOW:
        return means_after, LATENCY_WINDOW
    return {stage: (means_after[stage] * timed_after - means_before[stage] * timed_before)
            / measured for stage in means_after}, measured


def settled_part(values: Dict[str, str]) -> Dict[str, str]:
    """Return the frame counters and stage times of the node's key-values (not rates or ages)."""
    return {key: value for key, value in values.items()
            if key.startswith(('frames ', 'poses ', 'rejected ')) or ' latency ' in key}


def free_domain(first_offset: int) -> int:
    """Return a ROS domain id (1..101) on which no other node is visible.

    Benchmarks run beside test suites and other benchmark runs (a CI copy of the repo runs the
    smoke tests); two localizer nodes on one domain would answer each other's images.

    Raises:
        RuntimeError: every candidate domain is in use.
    """
    probe_name = 'mspr_benchmark_domain_probe'
    for offset in range(first_offset, first_offset + DOMAIN_ATTEMPTS):
        domain = domain_id(offset)
        client = RosClient(domain, name=probe_name)
        try:
            # Nothing to wait on: discovery announces other participants within this time.
            time.sleep(DOMAIN_PROBE_S)
            others = [name for name in client.node.get_node_names() if name != probe_name]
        finally:
            client.close()
        if not others:
            return domain
    raise RuntimeError(f'no free ROS domain among {DOMAIN_ATTEMPTS} candidates')


class NodeSession:
    """A benchmark node plus this process's client: image publisher, pose and diagnostics.

    The client publishes ``base_link -> camera_optical`` on ``/tf_static`` (as a robot's
    state publisher would), images on ``/image`` and records every ``~/pose`` arrival.
    Use as a context manager; leaving it stops the node and the client.
    """

    def __init__(self, name: str, threads: int, log_path: Path,
                 params: Optional[Dict[str, Any]] = None,
                 program: Optional[Sequence[str]] = None) -> None:
        """Start the node (``program``, default the localizer, with ``params``) and the client.

        Both run on a free ROS domain (see :func:`free_domain`); ``name`` picks its offsets.
        The node gets ``threads`` OpenMP threads, as the in-process reference it is compared
        with.
        """
        domain = free_domain(DOMAIN_OFFSETS[name])
        self.node = NodeProcess(domain, log_path, params, program=program, threads=threads)
        self.client: Optional[RosClient] = None
        try:
            self.client = RosClient(domain, name=f'mspr_benchmark_{name}')
            self.arrivals = StampedArrivals()
            self.client.node.create_subscription(
                PoseWithCovarianceStamped, f'/{NODE_NAME}/pose', self.arrivals.callback,
                POSE_QOS)
            self.diagnostics = self.client.subscribe(DiagnosticArray, '/diagnostics')
            self.images = self.client.publisher(Image, '/image', IMAGE_PUBLISHER_QOS)
            tf_static = self.client.publisher(TFMessage, '/tf_static', TF_STATIC_PUBLISHER_QOS)
            tf_static.publish(TFMessage(transforms=[transform_to_msg(
                BASE_TO_CAMERA, 'base_link', CAMERA_FRAME, self.client.now_ns())]))
            self.node.wait_active(START_TIMEOUT_S)
            self.client.wait_for_subscribers(self.images, timeout=START_TIMEOUT_S)
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> 'NodeSession':
        """Return the running session."""
        return self

    def __exit__(self, *exc_info: Any) -> None:
        """Stop the client and the node."""
        self.close()

    def close(self) -> None:
        """Stop the client and the node (idempotent)."""
        if self.client is not None:
            self.client.close()
            self.client = None
        if self.node.process.poll() is None:
            self.node.stop()

    def resident_bytes(self) -> int:
        """Return the node's resident memory, its children included (bytes)."""
        return resident_bytes(self.node.process.pid)

    def node_log_tail(self) -> str:
        """Return where the node's log is and its end, for an error message."""
        return f'node log {self.node.log_path}:\n{self.node.output()[-3000:]}'

    def image_messages(self, frames: Sequence[np.ndarray]) -> List[Image]:
        """Return one rgb8 ``Image`` per frame (stamps are set at publish time)."""
        return [rgb_to_image_msg(rgb, 'rgb8', 0, CAMERA_FRAME) for rgb in frames]

    def publish(self, msg: Image) -> tuple:
        """Stamp ``msg`` now and publish it; return ``(stamp_ns, perf_counter s before)``."""
        stamp_ns = self.client.now_ns()
        msg.header.stamp = ns_to_stamp(stamp_ns)
        started = time.perf_counter()
        self.images.publish(msg)
        return stamp_ns, started

    def round_trip_ms(self, msg: Image, timeout: float) -> float:
        """Publish ``msg`` and wait for its pose; return image publish -> pose arrival (ms).

        Raises:
            RuntimeError: no pose within ``timeout`` (with the end of the node's log).
        """
        stamp_ns, started = self.publish(msg)
        try:
            arrived, _ = self.arrivals.wait(stamp_ns, timeout)
        except TimeoutError as error:
            raise RuntimeError(f'{error}: the node answered no pose for the frame; '
                               f'{self.node_log_tail()}') from None
        return 1e3 * (arrived - started)

    def first_pose(self, msg: Image, timeout: float = START_TIMEOUT_S,
                   resend_s: float = 5.0) -> None:
        """Publish ``msg`` until a pose answers one of the copies (the first frame's warm-up).

        Right after discovery the large-data transport may still be connecting, and a
        best-effort subscription then loses the frame; a camera just sends the next one.

        Raises:
            RuntimeError: no pose within ``timeout`` (with the end of the node's log).
        """
        deadline = time.monotonic() + timeout
        sent: List[int] = []
        while time.monotonic() < deadline:
            sent.append(self.publish(msg)[0])
            wait_until = min(deadline, time.monotonic() + resend_s)
            while time.monotonic() < wait_until:
                if any(stamp in self.arrivals.snapshot() for stamp in sent):
                    return
                try:
                    self.arrivals.wait(sent[-1], max(0.0, min(0.1, wait_until - time.monotonic())))
                    return
                except TimeoutError:
                    continue
        raise RuntimeError(f'no pose for {len(sent)} copies of the first frame within '
                           f'{timeout:.0f} s; {self.node_log_tail()}')

    def diagnostics_after(self, time_ns: int, timeout: float = 30.0) -> Dict[str, str]:
        """Return the localizer's key-values once settled, from statuses stamped after ``time_ns``.

        Call it with no frame in flight. The node publishes a pose before it records that
        frame's publish and total times, so a status sent in between counts the frame as
        processed without its times; the first of two consecutive statuses that agree on the
        counters and stage times is returned.
        """
        deadline = time.monotonic() + timeout
        previous: Optional[Dict[str, str]] = None
        while True:
            time_ns, values = self._status_after(time_ns, deadline - time.monotonic())
            if previous is not None and settled_part(values) == settled_part(previous):
                return previous
            previous = values

    def _status_after(self, time_ns: int, timeout: float) -> Tuple[int, Dict[str, str]]:
        """Return the stamp and key-values of the first localizer status after ``time_ns``."""
        def newer(msg: DiagnosticArray) -> bool:
            return (stamp_to_ns(msg.header.stamp) > time_ns
                    and own_status(msg, NODE_NAME) is not None)
        msg = self.diagnostics.wait_for(newer, max(0.0, timeout), 'the node diagnostics')
        return (stamp_to_ns(msg.header.stamp),
                diagnostic_values(own_status(msg, NODE_NAME)))
