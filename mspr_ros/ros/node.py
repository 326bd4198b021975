"""The ``mspr_localizer`` lifecycle node: camera images in, pose in the map + map -> odom out.

A thin shell: this class wires parameters, publishers, subscriptions, timers, services and the
inference worker. The per-frame work is ``mspr_ros.ros.frame_pipeline`` (over the ROS-free
``mspr_ros.estimation``), the outputs ``mspr_ros.ros.outputs``, names and QoS
``mspr_ros.ros.interface``.

Lifecycle (``rclpy.lifecycle``; ``autostart`` runs configure + activate by itself):

- configure: validate parameters, resolve the device, load the weights bundle and warm the model
  up (a failure logs one error naming the file and the problem; the node stays unconfigured),
  create publishers, timers, services, TF and publish the per-scene ``map <- scene`` frames on
  ``/tf_static``;
- activate: subscribe to the image, ``initialpose`` and (optionally) ``odom`` topics, apply
  ``set_initial_pose`` and start the inference worker; deactivate stops both; cleanup frees the
  model (and the CUDA cache).

TF stamping rule (AMCL's, made exact; ``mspr_ros.estimation.tf_stamping``): an accepted
frame's ``map -> odom`` is stamped ``image stamp + transform_tolerance``, raised when needed to
stay after every stamp already sent; the previous correction is re-sent 1 ns before it, so a
lookup at any time returns one correction or the next, never a blend. Every
``transform_publish_period`` the newest correction is re-sent at
``max(now + transform_tolerance, last stamp + 1 ns)``. Stamps therefore strictly increase.

Threading (``mspr_ros.ros.worker``): the image callback only keeps the newest message, one
worker thread does the rest; every other callback runs on a single-threaded executor and never
waits.

Run: ``ros2 run mspr_ros localizer --ros-args --params-file config/mspr_ros.yaml`` or
``python -m mspr_ros.ros.node --ros-args ...``.
"""
from dataclasses import dataclass
import gc
import sys
import time
import traceback
from typing import Any, Optional

from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseWithCovarianceStamped
from nav_msgs.msg import Odometry
from rcl_interfaces.msg import SetParametersResult
import rclpy
from rclpy.clock import JumpThreshold, TimeJump
from rclpy.duration import Duration
from rclpy.event_handler import SubscriptionEventCallbacks
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_srvs.srv import Empty, Trigger

from mspr_ros.ros import interface
from mspr_ros.ros.bond import ManagerBond
from mspr_ros.ros.configure import load_localizer, scene_alignments, torch_threads
from mspr_ros.ros.configure import validated_parameters
from mspr_ros.ros.conversions import ns_to_stamp
from mspr_ros.ros.diagnostics import build_status, LocalizationStats, no_image_warning, NodeInfo
from mspr_ros.ros.frame_pipeline import FramePipeline
from mspr_ros.ros.initialpose import prior_from_parameters
from mspr_ros.ros.interface import IMAGE_QOS, NODE_NAME, POSE_QOS  # noqa: F401 - re-exported
from mspr_ros.ros.logs import core_logs_to, ThrottledLog
from mspr_ros.ros.outputs import scene_frame_messages
from mspr_ros.ros.params import change_problem, declare_node_parameters
from mspr_ros.ros.params import ParameterValidationError, read_node_parameters
from mspr_ros.ros.worker import LatestFrameWorker
from mspr_ros.runtime.allocator import retain_freed_memory


@dataclass
class _Configured:
    """What configure builds and cleanup releases."""

    pipeline: FramePipeline
    worker: LatestFrameWorker
    timers: list
    services: list
    diagnostics_publisher: Any
    bond: ManagerBond


class LocalizerNode(LifecycleNode):
    """Lifecycle node wrapping ``mspr_ros.localizer.Localizer``; see the module docstring."""

    def __init__(self, **kwargs):
        """Declare parameters; nothing is loaded until configure."""
        super().__init__(NODE_NAME, **kwargs)
        declare_node_parameters(self)
        self._configured: Optional[_Configured] = None
        self._stats = LocalizationStats()
        self._info = NodeInfo(node_name=self.get_name())
        self._log = ThrottledLog(self.get_logger())
        self._input_subscriptions: list = []
        self._active = False
        self._activated_at = 0.0
        self.add_on_set_parameters_callback(self._validate_parameter_change)
        self.add_post_set_parameters_callback(self._apply_parameter_change)
        # Any jump back (bag loop, simulator reset, use_sim_time switched) starts a new time
        # line: stamps from the old one would keep TF and the fusion frozen in the past.
        self._jump_handle = self.get_clock().create_jump_callback(
            JumpThreshold(min_forward=None, min_backward=Duration(nanoseconds=-1),
                          on_clock_change=True),
            post_callback=self._on_clock_jump)

    # ------------------------------------------------------------------ lifecycle transitions

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Validate parameters, load and warm the model, create publishers/timers/services.

        Any failure logs the exception with its traceback, releases whatever configure had
        built and returns FAILURE: the node stays unconfigured and a later configure can work.
        """
        try:
            self._configure()
        except Exception as error:  # noqa: BLE001 - any configure failure must leave us clean
            self.get_logger().error(
                f'configure failed: {type(error).__name__}: {error}\n{traceback.format_exc()}')
            self._release()
            return TransitionCallbackReturn.FAILURE
        return TransitionCallbackReturn.SUCCESS

    def _configure(self) -> None:
        """Build everything, registered in ``self._configured`` as soon as it exists."""
        with core_logs_to(self.get_logger()):
            params, device = validated_parameters(self)
            localizer = load_localizer(params, device)
        alignments = scene_alignments(self, localizer)
        input_topic = self.resolve_topic_name(interface.image_topic(params.image_transport))
        self._stats.reset()  # before the pipeline, which reports its settings there
        pipeline = FramePipeline.create(self, params, localizer, alignments, self._stats,
                                        input_topic)
        self._configured = configured = _Configured(
            pipeline=pipeline,
            worker=LatestFrameWorker(pipeline.process, lambda: pipeline.params.max_rate,
                                     pipeline.on_error),
            timers=[], services=[], diagnostics_publisher=None,
            bond=ManagerBond(self, params.bond_heartbeat_period))
        configured.timers.append(
            self.create_timer(params.diagnostics_period, self._publish_diagnostics))
        if params.transform_publish_period > 0.0:
            configured.timers.append(self.create_timer(params.transform_publish_period,
                                                       self._rebroadcast_transform))
        configured.services.append(self.create_service(Trigger, interface.RELOCALIZE_SERVICE,
                                                       self._on_relocalize))
        configured.services.append(self.create_service(
            Empty, interface.REINITIALIZE_SERVICE, self._on_reinitialize))
        configured.diagnostics_publisher = self.create_publisher(
            DiagnosticArray, interface.DIAGNOSTICS_TOPIC, interface.OUTPUT_QOS_DEPTH)
        pipeline.tf.static_broadcaster.send(scene_frame_messages(
            params, alignments, self.get_clock().now().nanoseconds))
        self._info = NodeInfo(
            node_name=self.get_name(), lifecycle_state='inactive', input_topic=input_topic,
            device=str(localizer.device), weights=str(localizer.bundle.path),
            weights_sha256=localizer.bundle.sha256, scenes=tuple(localizer.scene_names),
            extra={'image decoder': pipeline.decoder.backend, 'tf backend': pipeline.tf.backend,
                   'cpu threads': str(torch_threads()), 'precision': localizer.precision,
                   'cuda graphs': str(localizer.cuda_graphs).lower(),
                   'torch compile': str(localizer.torch_compile).lower()})
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
            f'{input_topic} ({params.image_qos} QoS), tf backend {pipeline.tf.backend}')

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Enable lifecycle publishers, subscribe to inputs and start the inference worker."""
        result = super().on_activate(state)
        if result != TransitionCallbackReturn.SUCCESS:
            return result
        pipeline = self._configured.pipeline
        pipeline.restart_fusion()
        pipeline.outputs.arm_seed()
        if pipeline.params.set_initial_pose:
            pipeline.set_prior(*prior_from_parameters(pipeline.params), 'set_initial_pose')
        self._input_subscriptions = self._create_subscriptions(pipeline)
        self._configured.worker.start()
        self._configured.bond.start()
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

    def _create_subscriptions(self, pipeline: FramePipeline) -> list:
        params = pipeline.params
        events = SubscriptionEventCallbacks(incompatible_qos=self._on_incompatible_qos)
        image_type = Image if params.image_transport == 'raw' else CompressedImage
        subscriptions = [
            self.create_subscription(image_type, interface.image_topic(params.image_transport),
                                     self._on_image, IMAGE_QOS[params.image_qos],
                                     event_callbacks=events),
            self.create_subscription(PoseWithCovarianceStamped, interface.INITIALPOSE_TOPIC,
                                     pipeline.on_initialpose, interface.INITIALPOSE_QOS)]
        if params.amcl_pose_topic and params.publish_initialpose:
            # AMCL publishes amcl_pose reliable and transient local: any reliable reader matches.
            subscriptions.append(self.create_subscription(
                PoseWithCovarianceStamped, params.amcl_pose_topic, pipeline.on_amcl_pose,
                interface.POSE_QOS))
        if params.use_odom_topic:
            subscriptions.append(self.create_subscription(
                Odometry, interface.ODOM_TOPIC, pipeline.on_odometry, interface.ODOM_QOS_DEPTH))
        if pipeline.camera_input.subscribes:
            # The camera's QoS is the images' (a driver publishes both alike).
            subscriptions.append(self.create_subscription(
                CameraInfo, pipeline.camera_input.topic, pipeline.camera_input.on_camera_info,
                IMAGE_QOS[params.image_qos]))
        return subscriptions

    def _stop_processing(self) -> None:
        """Break the bond, unsubscribe and join the worker (idempotent)."""
        self._active = False
        if self._configured is not None:
            self._configured.bond.stop()
        for subscription in self._input_subscriptions:
            self.destroy_subscription(subscription)
        self._input_subscriptions = []
        if self._configured is not None:
            self._configured.worker.stop()

    def _release(self) -> None:
        """Destroy what configure created and free the model (idempotent)."""
        configured, self._configured = self._configured, None
        if configured is None:
            return
        configured.bond.stop()
        for timer in configured.timers:
            self.destroy_timer(timer)
        for service in configured.services:
            self.destroy_service(service)
        if configured.diagnostics_publisher is not None:
            self.destroy_publisher(configured.diagnostics_publisher)
        configured.pipeline.close()
        device = str(configured.pipeline.localizer.device)
        del configured
        if device.startswith('cuda'):
            import torch
            torch.cuda.empty_cache()
        self._info.lifecycle_state = 'unconfigured'

    # ------------------------------------------------------------------ callbacks

    def _on_clock_jump(self, jump: TimeJump) -> None:
        """Restart the time-dependent state when the node clock goes back (executor thread)."""
        configured = self._configured
        if configured is None:
            return
        # Called only for a jump back or a change of time source (the threshold in __init__);
        # a change forward starts a new time line too, with no old stamps to drop.
        configured.pipeline.on_clock_jump(self.get_clock().now().nanoseconds,
                                          min(jump.delta.nanoseconds, 0))

    def _on_incompatible_qos(self, event) -> None:
        self.get_logger().warning(
            f'a publisher on {self._info.input_topic} has incompatible QoS (policy id '
            f'{event.last_policy_kind}); set image_qos to match it')

    def _on_image(self, msg) -> None:
        """Keep only the newest image; the worker takes it when it is free."""
        self._stats.image_received(self._configured.worker.offer(msg))

    def _on_relocalize(self, request, response: Trigger.Response) -> Trigger.Response:
        self._arm_relocalization()
        response.success = True
        response.message = (
            'relocalization armed: the next frame with scene confidence >= '
            f'{self._configured.pipeline.params.min_scene_confidence:.2f} is accepted '
            'regardless of the jump limits and the initial pose')
        if not self._active:
            response.message += f' (node is {self.lifecycle_state()}: activate it to process)'
        return response

    def _on_reinitialize(self, request, response: Empty.Response) -> Empty.Response:
        self._arm_relocalization()
        return response

    def _arm_relocalization(self) -> None:
        self._configured.pipeline.request_relocalization()

    def _rebroadcast_transform(self) -> None:
        """Re-send the newest map -> odom with a forward-moving stamp (steady TF rate)."""
        if self._active:
            self._configured.pipeline.map_odom.rebroadcast(self.get_clock().now().nanoseconds)

    def _publish_diagnostics(self) -> None:
        snapshot = self._stats.snapshot()
        warning = self._active and no_image_warning(
            self._info, snapshot, time.monotonic() - self._activated_at)
        if warning:
            self._log('no_image', warning)
        msg = DiagnosticArray(status=[build_status(
            self._info, snapshot, self._configured.pipeline.processor.relocalization_pending)])
        msg.header.stamp = ns_to_stamp(self.get_clock().now().nanoseconds)
        self._configured.diagnostics_publisher.publish(msg)

    # ------------------------------------------------------------------ parameters at run time

    def _validate_parameter_change(self, parameters: list) -> SetParametersResult:
        """Reject runtime changes that would make the parameter set invalid."""
        problem = change_problem(self, parameters)
        return SetParametersResult(successful=problem is None, reason=problem or '')

    def _apply_parameter_change(self, parameters: list) -> None:
        """Apply thresholds, frames and rates at once (QoS, weights and timers need configure)."""
        if self._configured is None:
            return
        try:
            params = read_node_parameters(self)
        except ParameterValidationError:
            return  # other, unchanged parameters are invalid; keep the configured snapshot
        self._configured.pipeline.update_params(params)


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
