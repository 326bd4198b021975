"""The ``mspr_localizer`` lifecycle node: camera images in, pose in the map + map -> odom out.

Lifecycle (``rclpy.lifecycle``; ``autostart`` runs configure + activate by itself):

- configure: validate parameters, resolve the device, load the weights bundle and warm the model
  up (a failure logs one error naming the file and the problem; the node stays unconfigured),
  create publishers, timers, services, TF and publish the per-scene ``map <- scene`` frames on
  ``/tf_static``;
- activate: subscribe to the image, ``initialpose`` and (optionally) ``odom`` topics and start
  the inference worker; deactivate stops both; cleanup frees the model (and the CUDA cache).

Threading: the image callback only stores the latest message; one worker thread runs decode,
inference, TF lookups, gating and publishing, so a slow model drops frames instead of queueing
them. Everything else runs on a single-threaded executor: its callbacks are short and never wait
(only the worker waits for ``odom -> base`` at the image stamp, while the executor keeps taking
TF). Measured with 640x480 images (benchmarks/README.md): rclpy's MultiThreadedExecutor delayed
each image by 25-75 ms median, p95 350 ms, where the single-threaded one takes 2 ms.

Run: ``ros2 run mspr_ros localizer --ros-args --params-file config/mspr_ros.yaml`` or
``python -m mspr_ros.ros.node --ros-args ...``.
"""
import contextlib
from dataclasses import dataclass
import gc
import logging
import math
import re
import sys
import threading
import time
from typing import Any, Dict, Optional, Tuple, Union

from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped, PoseWithCovarianceStamped
from nav_msgs.msg import Odometry
import numpy as np
from rcl_interfaces.msg import SetParametersResult
import rclpy
from rclpy.event_handler import SubscriptionEventCallbacks
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import DurabilityPolicy, qos_profile_sensor_data, qos_profile_system_default
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Float32, String
from std_srvs.srv import Empty, Trigger

from mspr_ros.estimation.frame_processor import CovarianceSettings, FrameEstimate, FrameProcessor
from mspr_ros.estimation.frame_processor import NON_FINITE, NonFiniteEstimate, ProcessorSettings
from mspr_ros.estimation.gating import GateConfig
from mspr_ros.geometry.tf_history import TransformBuffer
from mspr_ros.geometry.transforms import SceneAlignment, Transform
from mspr_ros.image_conversion import ImageConversionError
from mspr_ros.ros.conversions import covariance_from_msg, ImageDecoder, ns_to_stamp
from mspr_ros.ros.conversions import odometry_transform, pose_from_msg, pose_stamped
from mspr_ros.ros.conversions import pose_with_covariance_stamped, stamp_to_ns
from mspr_ros.ros.conversions import transform_to_msg
from mspr_ros.ros.diagnostics import build_status, LocalizationStats, NO_IMAGE_WARN_S, NodeInfo
from mspr_ros.ros.params import alignment_to_param, declare_node_parameters, NodeParams
from mspr_ros.ros.params import PARAM_NAMES, ParameterValidationError, parse_scene_alignment
from mspr_ros.ros.params import read_node_parameters, SCENE_PARAM_PREFIX
from mspr_ros.ros.params import scene_alignment_descriptor, scene_param_name
from mspr_ros.ros.tf import create_tf_interfaces, lookup_or_raise, TfInterfaces
from mspr_ros.ros.tf import TransformUnavailable
from mspr_ros.runtime.allocator import retain_freed_memory

NODE_NAME = 'mspr_localizer'
# Latched like AMCL's amcl_pose: late joiners get the last pose; volatile subscribers match.
POSE_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL)
INITIALPOSE_QOS = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
IMAGE_QOS = {
    'sensor_data': qos_profile_sensor_data,
    'reliable': QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE),
    'system_default': qos_profile_system_default,
}
WARN_THROTTLE_S = 5.0


class _RosLogHandler(logging.Handler):
    """Forwards Python ``logging`` records of the core (e.g. the device fallback) to rclpy."""

    def __init__(self, ros_logger):
        """Forward to ``ros_logger`` (an rclpy logger)."""
        super().__init__(level=logging.INFO)
        self._ros_logger = ros_logger

    def emit(self, record: logging.LogRecord) -> None:
        """Log ``record`` at the matching rclpy severity."""
        text = record.getMessage()
        if record.levelno >= logging.ERROR:
            self._ros_logger.error(text)
        elif record.levelno >= logging.WARNING:
            self._ros_logger.warning(text)
        else:
            self._ros_logger.info(text)


@contextlib.contextmanager
def _core_logs_to(ros_logger):
    """Route ``mspr_ros.*`` Python log records to ``ros_logger`` inside the block."""
    core_logger = logging.getLogger('mspr_ros')
    handler = _RosLogHandler(ros_logger)
    previous_level, previous_propagate = core_logger.level, core_logger.propagate
    core_logger.addHandler(handler)
    core_logger.setLevel(logging.INFO)
    core_logger.propagate = False
    try:
        yield
    finally:
        core_logger.removeHandler(handler)
        core_logger.setLevel(previous_level)
        core_logger.propagate = previous_propagate


@dataclass
class _Loaded:
    """What configure builds and cleanup releases."""

    localizer: Any
    processor: FrameProcessor
    decoder: ImageDecoder
    tf: TfInterfaces
    odom_buffer: Optional[TransformBuffer]
    publishers: Dict[str, Any]
    timers: list
    services: list
    diagnostics_publisher: Any


class LocalizerNode(LifecycleNode):
    """Lifecycle node wrapping ``mspr_ros.localizer.Localizer``; see the module docstring."""

    def __init__(self, **kwargs):
        """Declare parameters; nothing is loaded until configure."""
        super().__init__(NODE_NAME, **kwargs)
        declare_node_parameters(self)
        self._params: Optional[NodeParams] = None
        self._loaded: Optional[_Loaded] = None
        self._stats = LocalizationStats()
        self._info = NodeInfo(node_name=self.get_name())
        self._input_subscriptions: list = []
        self._frame_lock = threading.Condition()
        self._pending: Optional[Union[Image, CompressedImage]] = None
        self._stop_worker = True
        self._worker: Optional[threading.Thread] = None
        self._active = False
        self._activated_at = 0.0
        self._map_odom_lock = threading.Lock()
        self._last_map_odom: Optional[Transform] = None
        self._extrinsics: Dict[str, Transform] = {}
        self._fallback_logged: set = set()
        self._seed_initialpose = False
        self._last_seed: Optional[PoseWithCovarianceStamped] = None
        self._throttle: Dict[str, float] = {}
        self.add_on_set_parameters_callback(self._validate_parameter_change)
        self.add_post_set_parameters_callback(self._apply_parameter_change)

    # ------------------------------------------------------------------ lifecycle transitions

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Validate parameters, load and warm the model, create publishers/timers/services."""
        try:
            with _core_logs_to(self.get_logger()):
                params, device = self._validated_parameters()
                localizer = self._load_localizer(params, device)
            alignments = self._scene_alignments(localizer)
        except Exception as error:  # noqa: BLE001 - any configure failure must leave us clean
            self.get_logger().error(f'configure failed: {error}')
            return TransitionCallbackReturn.FAILURE
        self._params = params
        calibrations = {name: np.asarray(cov) for name, cov in localizer.bundle.covariance.items()}
        processor = FrameProcessor(alignments, calibrations, self._processor_settings(params))
        tf = create_tf_interfaces(self,
                                  on_bad_transform=lambda text: self._warn('bad_tf', text))
        self._loaded = _Loaded(
            localizer=localizer, processor=processor,
            decoder=ImageDecoder(params.max_image_pixels), tf=tf,
            odom_buffer=TransformBuffer() if params.use_odom_topic else None,
            publishers=self._create_publishers(params), timers=[], services=[],
            diagnostics_publisher=self.create_publisher(DiagnosticArray, '/diagnostics', 10))
        self._loaded.services = [
            self.create_service(Trigger, '~/relocalize', self._on_relocalize),
            self.create_service(Empty, 'reinitialize_global_localization',
                                self._on_reinitialize),
        ]
        self._loaded.timers.append(self.create_timer(
            params.diagnostics_period, self._publish_diagnostics))
        if params.transform_publish_period > 0.0:
            self._loaded.timers.append(self.create_timer(
                params.transform_publish_period, self._rebroadcast_transform))
        self._publish_scene_frames(params, alignments)
        self._stats.reset()
        self._extrinsics.clear()
        self._fallback_logged.clear()
        self._info = NodeInfo(
            node_name=self.get_name(), lifecycle_state='inactive',
            input_topic=self._input_topic(params), device=str(localizer.device),
            weights=str(localizer.bundle.path), weights_sha256=localizer.bundle.sha256,
            scenes=tuple(localizer.scene_names),
            extra={'image decoder': self._loaded.decoder.backend, 'tf backend': tf.backend,
                   'cpu threads': str(_torch_threads())})
        if not params.odom_frame_id:
            self.get_logger().warning(
                f"odom_frame_id is empty: publishing {params.global_frame_id} -> "
                f"{params.base_frame_id} directly. Only for robots without odometry: it makes "
                'this node the only parent of the base frame.')
        # Torch, rclpy and the model leave ~200k long-lived objects; a full collection walked
        # them for ~60 ms (measured), a pause in the image stream. Frozen, they are skipped.
        gc.collect()
        gc.freeze()
        self.get_logger().info(
            f'configured: weights {localizer.bundle.path} (sha256 {localizer.bundle.sha256[:12]}),'
            f' device {localizer.device}, scenes {list(localizer.scene_names)}, input '
            f'{self._info.input_topic} ({params.image_qos} QoS), tf backend {tf.backend}')
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Enable lifecycle publishers, subscribe to inputs and start the inference worker."""
        result = super().on_activate(state)
        if result != TransitionCallbackReturn.SUCCESS:
            return result
        params = self._params
        self._loaded.processor.reset()
        with self._map_odom_lock:
            self._last_map_odom = None
        self._seed_initialpose = True
        self._input_subscriptions = self._create_subscriptions(params)
        self._start_worker()
        self._activated_at = time.monotonic()
        self._active = True
        self._info.lifecycle_state = 'active'
        self.get_logger().info(f'active: waiting for images on {self._info.input_topic}')
        return TransitionCallbackReturn.SUCCESS

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Stop processing: unsubscribe, join the worker, disable lifecycle publishers."""
        self._stop_processing()
        self._info.lifecycle_state = 'inactive'
        self.get_logger().info('deactivated: not processing images')
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Destroy publishers, timers, services and TF; free the model."""
        self._release()
        self.get_logger().info('cleaned up: model released')
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Release everything from any state."""
        self._stop_processing()
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Release everything; the node returns to unconfigured."""
        self.get_logger().error(f'error while in state {state.label}: releasing everything')
        self._stop_processing()
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def autostart(self) -> None:
        """Configure and activate when the ``autostart`` parameter is true."""
        if not self.get_parameter('autostart').value:
            self.get_logger().info('autostart is false: waiting for lifecycle transitions')
            return
        if self.trigger_configure() == TransitionCallbackReturn.SUCCESS:
            self.trigger_activate()

    def lifecycle_state(self) -> str:
        """Label of the current lifecycle state (e.g. 'active')."""
        return self._state_machine.current_state[1]

    # ------------------------------------------------------------------ configure helpers

    def _validated_parameters(self) -> Tuple[NodeParams, str]:
        """Return the parameters and the resolved device, or raise listing every problem."""
        from mspr_ros.device import resolve_device
        problems = []
        try:
            params = read_node_parameters(self)
        except ParameterValidationError as error:
            problems.extend(problem.text for problem in error.problems)
        try:
            device = str(resolve_device(self.get_parameter('device').value))
        except ValueError as error:
            problems.append(str(error))
        if problems:
            raise ValueError('invalid parameters: ' + '; '.join(problems))
        return params, device

    def _load_localizer(self, params: NodeParams, device: str):
        import torch
        from mspr_ros.localizer import Localizer
        if params.cpu_threads > 0:
            torch.set_num_threads(params.cpu_threads)
        try:
            localizer = Localizer.from_file(params.weights, device=device, fp16=params.fp16)
            localizer.warmup()
        except Exception as error:
            text = str(error)
            # Every weights problem must name the file, whatever raised it.
            if params.weights not in text:
                text = f'weights {params.weights}: {text}'
            raise RuntimeError(text) from error
        return localizer

    def _scene_alignments(self, localizer) -> Dict[str, SceneAlignment]:
        """Declare ``scenes.<name>.map_from_scene`` (bundle value as default) and read them."""
        alignments = {}
        for scene in localizer.scene_names:
            name = scene_param_name(scene)
            bundle_value = localizer.bundle.scene_alignment[scene].to_dict()
            if not self.has_parameter(name):
                self.declare_parameter(name, alignment_to_param(bundle_value),
                                       scene_alignment_descriptor(scene))
            value = parse_scene_alignment(scene, self.get_parameter(name).value)
            alignments[scene] = SceneAlignment.from_dict(value, context=name)
        return alignments

    @staticmethod
    def _processor_settings(params: NodeParams) -> ProcessorSettings:
        gate = GateConfig(
            min_scene_confidence=params.min_scene_confidence,
            max_jump_translation=params.max_jump_translation or math.inf,
            max_jump_rotation_deg=params.max_jump_rotation or math.inf,
            allowed_scenes=frozenset(params.allowed_scenes))
        cov = params.covariance
        return ProcessorSettings(
            gate=gate, two_d_mode=params.two_d_mode,
            covariance=CovarianceSettings(cov.mode, cov.position_stddev, cov.orientation_stddev,
                                          cov.confidence_inflation))

    def _create_publishers(self, params: NodeParams) -> Dict[str, Any]:
        publishers = {
            'pose': self.create_lifecycle_publisher(
                PoseWithCovarianceStamped, '~/pose', POSE_QOS),
            'camera_pose': self.create_lifecycle_publisher(PoseStamped, '~/camera_pose', 10),
            'scene': self.create_lifecycle_publisher(String, '~/scene', 10),
            'scene_confidence': self.create_lifecycle_publisher(
                Float32, '~/scene_confidence', 10),
        }
        if params.publish_initialpose:
            publishers['initialpose'] = self.create_lifecycle_publisher(
                PoseWithCovarianceStamped, 'initialpose', INITIALPOSE_QOS)
        return publishers

    def _publish_scene_frames(self, params: NodeParams,
                              alignments: Dict[str, SceneAlignment]) -> None:
        """Latch ``global_frame_id -> <scene>`` (rigid part of each alignment) on /tf_static."""
        stamp = self.get_clock().now().nanoseconds
        self._loaded.tf.static_broadcaster.send([
            transform_to_msg(alignment.as_transform(), params.global_frame_id, scene, stamp)
            for scene, alignment in alignments.items()])

    def _input_topic(self, params: NodeParams) -> str:
        name = 'image' if params.image_transport == 'raw' else 'image/compressed'
        return self.resolve_topic_name(name)

    # ------------------------------------------------------------------ activate helpers

    def _create_subscriptions(self, params: NodeParams) -> list:
        events = SubscriptionEventCallbacks(incompatible_qos=self._on_incompatible_qos)
        image_type = Image if params.image_transport == 'raw' else CompressedImage
        topic = 'image' if params.image_transport == 'raw' else 'image/compressed'
        subscriptions = [
            self.create_subscription(image_type, topic, self._on_image,
                                     IMAGE_QOS[params.image_qos], event_callbacks=events),
            self.create_subscription(PoseWithCovarianceStamped, 'initialpose',
                                     self._on_initialpose, INITIALPOSE_QOS),
        ]
        if params.use_odom_topic:
            subscriptions.append(self.create_subscription(
                Odometry, 'odom', self._on_odometry, 50))
        return subscriptions

    def _on_incompatible_qos(self, event) -> None:
        self.get_logger().warning(
            f'a publisher on {self._info.input_topic} has incompatible QoS (policy id '
            f'{event.last_policy_kind}); set image_qos to match it')

    def _start_worker(self) -> None:
        with self._frame_lock:
            self._pending = None
            self._stop_worker = False
        self._worker = threading.Thread(target=self._worker_loop, name='mspr_inference',
                                        daemon=True)
        self._worker.start()

    def _stop_processing(self) -> None:
        """Unsubscribe and join the worker (idempotent)."""
        self._active = False
        for subscription in self._input_subscriptions:
            self.destroy_subscription(subscription)
        self._input_subscriptions = []
        with self._frame_lock:
            self._stop_worker = True
            self._pending = None
            self._frame_lock.notify_all()
        if self._worker is not None and self._worker is not threading.current_thread():
            self._worker.join()
        self._worker = None

    def _release(self) -> None:
        """Destroy what configure created and free the model (idempotent)."""
        loaded, self._loaded = self._loaded, None
        if loaded is None:
            return
        for timer in loaded.timers:
            self.destroy_timer(timer)
        for service in loaded.services:
            self.destroy_service(service)
        for publisher in loaded.publishers.values():
            self.destroy_lifecycle_publisher(publisher)
        self.destroy_publisher(loaded.diagnostics_publisher)
        loaded.tf.close()
        device = str(loaded.localizer.device)
        del loaded
        if device.startswith('cuda'):
            import torch
            torch.cuda.empty_cache()
        self._params = None
        self._info.lifecycle_state = 'unconfigured'

    # ------------------------------------------------------------------ inputs

    def _on_image(self, msg: Union[Image, CompressedImage]) -> None:
        """Keep only the newest image; the worker takes it when it is free."""
        with self._frame_lock:
            superseded = self._pending is not None
            self._pending = msg
            self._frame_lock.notify_all()
        self._stats.image_received(superseded)

    def _on_odometry(self, msg: Odometry) -> None:
        loaded, params = self._loaded, self._params
        if loaded is None or loaded.odom_buffer is None:
            return
        parent, child, stamp_ns, transform = odometry_transform(msg)
        if (parent, child) != (params.odom_frame_id, params.base_frame_id):
            self._warn('odom_frames', f"odom topic gives '{parent}' -> '{child}', expected "
                       f"'{params.odom_frame_id}' -> '{params.base_frame_id}'; using it as such")
        try:
            loaded.odom_buffer.set_transform(params.odom_frame_id, params.base_frame_id,
                                             stamp_ns, transform)
        except ValueError as error:
            self._warn('odom_bad', f'ignored odometry message: {error}')

    def _on_initialpose(self, msg: PoseWithCovarianceStamped) -> None:
        """Use an RViz 2D Pose Estimate (or any initial pose) as the gate's prior."""
        loaded, params = self._loaded, self._params
        if loaded is None or self._is_own_seed(msg):
            return
        frame = msg.header.frame_id or params.global_frame_id
        try:
            T_frame_base = pose_from_msg(msg.pose.pose)
            covariance = covariance_from_msg(msg)
            if frame != params.global_frame_id:
                # RViz stamps with wall time even under sim time, so use the latest transform;
                # no waiting: this callback runs on the executor that receives TF.
                T_map_frame = loaded.tf.listener.lookup(params.global_frame_id, frame, None, 0.0)
                T_frame_base = T_map_frame @ T_frame_base
                rotation = np.zeros((6, 6))
                rotation[:3, :3] = rotation[3:, 3:] = T_map_frame.rotation_object.as_matrix()
                covariance = rotation @ covariance @ rotation.T
        except (TransformUnavailable, ValueError) as error:
            self.get_logger().warning(f'ignoring initialpose in frame {frame!r}: {error}')
            return
        T_odom_base = None
        if params.odom_frame_id:
            try:
                T_odom_base = self._odom_to_base(params, None, timeout=0.0)
            except TransformUnavailable as error:
                self.get_logger().warning(
                    f'initialpose: {error}; the prior gates only the next frame')
        else:
            T_odom_base = Transform.identity()
        try:
            loaded.processor.set_prior(T_frame_base, covariance, T_odom_base)
        except ValueError as error:
            self.get_logger().warning(f'ignoring initialpose: {error}')
            return
        x, y, _ = T_frame_base.translation
        self.get_logger().info(
            f'initialpose prior set at x={x:.2f}, y={y:.2f}, '
            f'yaw={math.degrees(T_frame_base.yaw()):.1f} deg in {params.global_frame_id}')

    def _is_own_seed(self, msg: PoseWithCovarianceStamped) -> bool:
        """Return True for the ``initialpose`` this node published itself (seed for AMCL)."""
        seed = self._last_seed
        return seed is not None and seed.header == msg.header and seed.pose == msg.pose

    def _on_relocalize(self, request: Trigger.Request,
                       response: Trigger.Response) -> Trigger.Response:
        self._arm_relocalization()
        response.success = True
        response.message = (
            'relocalization armed: the next frame with scene confidence >= '
            f'{self._params.min_scene_confidence:.2f} is accepted regardless of the jump limits')
        if not self._active:
            response.message += f' (node is {self.lifecycle_state()}: activate it to process)'
        return response

    def _on_reinitialize(self, request: Empty.Request, response: Empty.Response
                         ) -> Empty.Response:
        self._arm_relocalization()
        return response

    def _arm_relocalization(self) -> None:
        self._loaded.processor.request_relocalization()
        self._seed_initialpose = True
        self.get_logger().info('relocalization requested: jump limits skipped for the next '
                               'confident frame')

    # ------------------------------------------------------------------ inference worker

    def _worker_loop(self) -> None:
        last_start = -math.inf
        while True:
            with self._frame_lock:
                while self._pending is None and not self._stop_worker:
                    self._frame_lock.wait()
                if self._stop_worker:
                    return
                max_rate = self._params.max_rate
                if max_rate > 0.0:
                    wait = last_start + 1.0 / max_rate - time.monotonic()
                    if wait > 0.0:
                        # Wait out the rate limit; a newer frame may replace this one meanwhile.
                        self._frame_lock.wait(wait)
                        continue
                msg, self._pending = self._pending, None
            last_start = time.monotonic()
            try:
                self._process(msg)
            except Exception as error:  # noqa: BLE001 - one bad frame must not kill the worker
                self._stats.rejected('inference_error')
                self._log_throttled('inference_error', f'frame failed: {error!r}', 'error')

    def _process(self, msg: Union[Image, CompressedImage]) -> None:
        """Decode, localize, look up TF, gate and publish one image."""
        params, loaded = self._params, self._loaded
        if params is None or loaded is None:
            return
        started = time.perf_counter()
        self._stats.frame_processed()
        stamp_ns = stamp_to_ns(msg.header.stamp)
        age_s = (self.get_clock().now().nanoseconds - stamp_ns) * 1e-9
        if params.max_image_age > 0.0 and age_s > params.max_image_age:
            self._reject('stale', f'dropped a frame {age_s:.3f} s old (max_image_age '
                         f'{params.max_image_age:.3f} s)')
            return
        try:
            rgb = (loaded.decoder.raw(msg) if isinstance(msg, Image)
                   else loaded.decoder.compressed(msg))
        except ImageConversionError as error:
            # Throttle per kind of problem (numbers masked), so a new problem is always logged.
            self._stats.rejected('bad_image')
            self._log_throttled('bad_image:' + re.sub(r'\d+', '#', str(error)),
                                f'skipped an image on {self._info.input_topic}: {error}', 'warn')
            return
        decoded = time.perf_counter()
        self._stats.stage_time('decode', (decoded - started) * 1e3)
        try:
            result = loaded.localizer.localize(rgb)
        except ValueError as error:
            self._reject(NON_FINITE, f'skipped a frame: {error}')
            return
        timings = loaded.localizer.timings
        self._stats.stage_time('preprocess', timings.preprocess_ms)
        self._stats.stage_time('inference', timings.inference_ms)
        self._stats.scene_seen(result.scene_name, result.scene_confidence)
        camera_frame = msg.header.frame_id or params.camera_frame_id
        try:
            T_odom_base = self._odom_to_base(params, stamp_ns)
        except TransformUnavailable as error:
            self._reject('tf_unavailable', f'skipped a frame: {error}')
            return
        try:
            estimate = loaded.processor.estimate(
                result.scene_name, result.scene_confidence, result.position,
                result.orientation, self._camera_in_base(params, camera_frame), T_odom_base)
        except NonFiniteEstimate as error:
            self._reject(NON_FINITE, f'skipped a frame: {error}')
            return
        publish_start = time.perf_counter()
        self._publish(params, loaded, estimate, stamp_ns)
        done = time.perf_counter()
        self._stats.stage_time('publish', (done - publish_start) * 1e3)
        self._stats.stage_time('total', (done - started) * 1e3)

    def _odom_to_base(self, params: NodeParams, stamp_ns: Optional[int],
                      timeout: Optional[float] = None) -> Transform:
        """``T_odom_base`` at ``stamp_ns`` (None: latest) from TF or the odom topic.

        Waits up to ``timeout`` (default ``transform_timeout``); only the worker may wait.
        """
        if not params.odom_frame_id:
            return Transform.identity()
        timeout = params.transform_timeout if timeout is None else timeout
        loaded = self._loaded
        if loaded.odom_buffer is not None:
            return lookup_or_raise(loaded.odom_buffer, params.odom_frame_id,
                                   params.base_frame_id, stamp_ns, timeout)
        return loaded.tf.listener.lookup(params.odom_frame_id, params.base_frame_id, stamp_ns,
                                         timeout)

    def _camera_in_base(self, params: NodeParams, camera_frame: str) -> Transform:
        """``T_base_cam`` from TF (cached once found) or the ``camera_to_base`` parameter."""
        if camera_frame == params.base_frame_id:
            return Transform.identity()
        cached = self._extrinsics.get(camera_frame)
        if cached is not None:
            return cached
        if camera_frame:
            # Wait for TF only until the fallback is first used; afterwards just peek.
            timeout = 0.0 if camera_frame in self._fallback_logged else params.transform_timeout
            try:
                T_base_cam = self._loaded.tf.listener.lookup(
                    params.base_frame_id, camera_frame, None, timeout)
            except TransformUnavailable as error:
                reason = str(error)
            else:
                self._extrinsics[camera_frame] = T_base_cam
                self.get_logger().info(
                    f"camera extrinsics '{params.base_frame_id}' <- '{camera_frame}' from TF: "
                    f'{T_base_cam}')
                return T_base_cam
        else:
            reason = 'the image has no frame_id and camera_frame_id is empty'
        if camera_frame not in self._fallback_logged:
            self._fallback_logged.add(camera_frame)
            self.get_logger().warning(
                f'{reason}; using the camera_to_base parameter {list(params.camera_to_base)} '
                'as the camera pose in the base frame')
        xyz, rpy = params.camera_to_base[:3], params.camera_to_base[3:]
        return Transform.from_xyz_rpy(xyz, rpy)

    def _publish(self, params: NodeParams, loaded: _Loaded, estimate: FrameEstimate,
                 stamp_ns: int) -> None:
        publishers = loaded.publishers
        if estimate.scene_confidence >= params.min_scene_confidence:
            publishers['scene'].publish(String(data=estimate.scene_name))
            publishers['scene_confidence'].publish(Float32(data=estimate.scene_confidence))
        if not estimate.decision.accepted:
            self._reject(estimate.decision.reason, estimate.decision.detail, level='info')
            return
        # TF first, so that a consumer of the pose can already transform with it.
        with self._map_odom_lock:
            self._last_map_odom = estimate.T_map_odom
        if params.tf_broadcast:
            tolerance_ns = int(round(params.transform_tolerance * 1e9))
            self._send_map_odom(params, estimate.T_map_odom, stamp_ns + tolerance_ns)
        frame = params.global_frame_id
        pose_msg = pose_with_covariance_stamped(estimate.T_map_base, estimate.covariance,
                                                frame, stamp_ns)
        publishers['pose'].publish(pose_msg)
        publishers['camera_pose'].publish(pose_stamped(estimate.T_map_cam, frame, stamp_ns))
        if self._seed_initialpose and 'initialpose' in publishers and estimate.relocalized:
            self._seed_initialpose = False
            self._last_seed = pose_msg
            publishers['initialpose'].publish(pose_msg)
        elif estimate.relocalized:
            self._seed_initialpose = False
        self._stats.pose_published()

    def _send_map_odom(self, params: NodeParams, T_map_odom: Transform, stamp_ns: int) -> None:
        child = params.odom_frame_id or params.base_frame_id
        self._loaded.tf.broadcaster.send(
            [transform_to_msg(T_map_odom, params.global_frame_id, child, stamp_ns)])

    def _rebroadcast_transform(self) -> None:
        """Re-send the last map -> odom stamped now + transform_tolerance (steady TF rate)."""
        params = self._params
        if not self._active or params is None or not params.tf_broadcast:
            return
        with self._map_odom_lock:
            T_map_odom = self._last_map_odom
        if T_map_odom is None:
            return
        stamp = self.get_clock().now().nanoseconds + int(round(params.transform_tolerance * 1e9))
        self._send_map_odom(params, T_map_odom, stamp)

    # ------------------------------------------------------------------ diagnostics and logs

    def _publish_diagnostics(self) -> None:
        loaded = self._loaded
        if loaded is None:
            return
        snapshot = self._stats.snapshot()
        waited = time.monotonic() - self._activated_at
        if self._active and waited > NO_IMAGE_WARN_S and (
                snapshot.last_image_age_s is None or snapshot.last_image_age_s > NO_IMAGE_WARN_S):
            self._warn('no_image', f'no image received on {self._info.input_topic} yet'
                       if snapshot.last_image_age_s is None else
                       f'no image on {self._info.input_topic} for '
                       f'{snapshot.last_image_age_s:.1f} s')
        msg = DiagnosticArray()
        msg.header.stamp = ns_to_stamp(self.get_clock().now().nanoseconds)
        msg.status = [build_status(self._info, snapshot)]
        loaded.diagnostics_publisher.publish(msg)

    def _reject(self, reason: str, text: str, level: str = 'warn') -> None:
        self._stats.rejected(reason)
        self._log_throttled(reason, text, level)

    def _warn(self, key: str, text: str) -> None:
        self._log_throttled(key, text, 'warn')

    def _log_throttled(self, key: str, text: str, level: str) -> None:
        """Log at most once per WARN_THROTTLE_S per key (rclpy throttles per call site only)."""
        now = time.monotonic()
        if now - self._throttle.get(key, -math.inf) < WARN_THROTTLE_S:
            return
        self._throttle[key] = now
        # rclpy fixes the severity per call site, hence one call per level.
        if level == 'info':
            self.get_logger().info(text)
        elif level == 'error':
            self.get_logger().error(text)
        else:
            self.get_logger().warning(text)

    # ------------------------------------------------------------------ parameters at run time

    def _validate_parameter_change(self, parameters: list) -> SetParametersResult:
        """Reject runtime changes that would make the parameter set invalid."""
        changed = {p.name for p in parameters}
        for param in parameters:
            if param.name.startswith(SCENE_PARAM_PREFIX):
                scene = param.name[len(SCENE_PARAM_PREFIX):].rsplit('.', 1)[0]
                try:
                    parse_scene_alignment(scene, param.value)
                except ParameterValidationError as error:
                    return SetParametersResult(successful=False, reason=str(error))
        if not changed & set(PARAM_NAMES):
            return SetParametersResult(successful=True)
        try:
            read_node_parameters(self, parameters)
        except ParameterValidationError as error:
            relevant = error.involving(changed)
            if relevant:
                return SetParametersResult(successful=False,
                                           reason='; '.join(p.text for p in relevant))
        return SetParametersResult(successful=True)

    def _apply_parameter_change(self, parameters: list) -> None:
        """Apply thresholds, frames and rates at once (QoS, weights and timers need configure)."""
        if self._params is None or self._loaded is None:
            return
        try:
            params = read_node_parameters(self)
        except ParameterValidationError:
            return  # other, unchanged parameters are invalid; keep the configured snapshot
        self._params = params
        self._loaded.processor.update_settings(self._processor_settings(params))


def _torch_threads() -> int:
    import torch
    return torch.get_num_threads()


def main(args=None) -> None:
    """Run the node with a single-threaded executor until Ctrl-C or shutdown."""
    # Before the model allocates anything: per-frame memory is then reused, not re-faulted.
    allocator = retain_freed_memory()
    rclpy.init(args=args)
    executor = SingleThreadedExecutor()
    node = None
    exit_code = 0
    try:
        node = LocalizerNode()
        node.get_logger().info(f'memory allocator: {allocator or "left at its defaults"}')
        executor.add_node(node)
        node.autostart()
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except ParameterException as error:
        rclpy.logging.get_logger(NODE_NAME).fatal(f'invalid parameter: {error}')
        exit_code = 2
    finally:
        if node is not None:
            node._stop_processing()
        executor.shutdown()
        if node is not None:
            node._release()
            node.destroy_node()
        rclpy.try_shutdown()
    # Torch and the model leave millions of objects; exclude them from the collection pass at
    # interpreter exit, which otherwise delays a Ctrl-C by seconds.
    gc.freeze()
    if exit_code:
        sys.exit(exit_code)


if __name__ == '__main__':
    main()
