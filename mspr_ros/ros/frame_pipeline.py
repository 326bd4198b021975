"""One image through the node: decode, read its camera, localize, look up TF, gate, fuse, publish.

``process`` runs on the inference thread (``mspr_ros.ros.worker``); the only thread that waits,
for ``odom -> base`` at the image stamp, while the executor keeps receiving TF and camera_info
(``camera_input``: the ``camera_model`` rule says whether the image is reprojected into the
training camera, resized and cropped, or rejected). The other inputs of the decisions arrive on
the executor too: odometry (``use_odom_topic``), initial poses, relocalization requests. The
decisions themselves are ROS-free: ``mspr_ros.estimation`` (``pose_stream``: the frame chain and
gates of ``frame_processor``, then ``fusion: window``), the same rule the offline bag replay
runs. Each accepted frame is offered to ``mspr_ros.estimation.filter_updates`` for
``~/pose_update`` (the thinned stream a Kalman filter may take as measurements), with
``odom -> base`` at its stamp; that state restarts with the fusion.

Fail closed on frames: the camera's pose in the base frame comes from TF (``base <- camera`` at
the image stamp, so a camera on a pan-tilt head or a mast is followed as it moves) or from the
``camera_to_base`` parameter only when it is set; without either the frame gives no output, and
the rejection names both frames.

Clock jumps (``on_clock_jump``, from the node's jump callback on the executor): the TF history
and the ``map -> odom`` stamps are cleared at once; the pose stream is restarted by the worker
before its next frame, so it never races a frame in flight. A frame in flight during the jump,
or stamped nearer the old time line than the new one, gives no output (``clock_jump``).
"""
import re
import threading
import time
from typing import Callable, Optional, Union

import numpy as np
from sensor_msgs.msg import CompressedImage, Image

from mspr_ros.estimation.filter_updates import FilterUpdates
from mspr_ros.estimation.frame_processor import FrameProcessor, NON_FINITE, NonFiniteEstimate
from mspr_ros.estimation.pose_stream import PoseStream
from mspr_ros.geometry.tf_history import TransformBuffer
from mspr_ros.geometry.transforms import Transform
from mspr_ros.image_conversion import ImageConversionError
from mspr_ros.ros.camera_input import CameraInput
from mspr_ros.ros.configure import error_correlation_models
from mspr_ros.ros.conversions import ImageDecoder, odometry_transform
from mspr_ros.ros.conversions import stamp_to_ns
from mspr_ros.ros.diagnostics import LocalizationStats
from mspr_ros.ros.initialpose import describe, prior_from_msg
from mspr_ros.ros.logs import ThrottledLog
from mspr_ros.ros.map_odom import MapOdomBroadcaster
from mspr_ros.ros.outputs import OutputPublishers
from mspr_ros.ros.params import ErrorCorrelations, fusion_config, NodeParams
from mspr_ros.ros.params import processor_settings
from mspr_ros.ros.tf import create_tf_interfaces, lookup_or_raise, TransformUnavailable
from mspr_ros.ros.tf import use_tf2_ros

NO_EXTRINSIC = 'no_extrinsic'
CLOCK_JUMP = 'clock_jump'


class FramePipeline:
    """Turns image messages into published outputs; one instance per configure."""

    def __init__(self, params: NodeParams, localizer, stream: PoseStream, tf, logger,
                 stats: LocalizationStats, outputs: OutputPublishers,
                 map_odom: MapOdomBroadcaster, now_ns: Callable[[], int], input_topic: str,
                 correlations: ErrorCorrelations, camera_input: CameraInput):
        """Wire the pipeline; ``now_ns`` reads the node clock (sim time aware)."""
        self.params = params
        self.filter_updates = FilterUpdates(correlations.models, correlations.default,
                                            params.pose_update_max_correlation)
        stats.error_correlation(correlations.describe(params))
        self.localizer = localizer
        self.camera_input = camera_input
        self.stream = stream
        self.processor = stream.processor
        self.decoder = ImageDecoder(params.max_image_pixels)
        self.tf = tf
        self.odom_buffer: Optional[TransformBuffer] = (
            TransformBuffer() if params.use_odom_topic else None)
        self._logger = logger
        self._log = ThrottledLog(logger)
        self._stats = stats
        self.outputs = outputs
        self.map_odom = map_odom
        self._now_ns = now_ns
        self._input_topic = input_topic
        self._fallback_logged: set = set()
        # Clock jumps: counted on the executor, acted on by the worker (see the module doc).
        self._jump_lock = threading.Lock()
        self._jumps = 0
        self._jumps_handled = 0
        self._old_time_line_after_ns: Optional[int] = None

    @classmethod
    def create(cls, node, params: NodeParams, localizer, alignments, stats: LocalizationStats,
               input_topic: str) -> 'FramePipeline':
        """Build the pipeline, its TF endpoints and its publishers on ``node`` (configure)."""
        calibrations = {name: np.asarray(cov) for name, cov in localizer.bundle.covariance.items()}
        correlations = error_correlation_models(params, localizer, node.get_logger())
        camera_input = CameraInput(node, params, localizer, input_topic, stats)
        log = ThrottledLog(node.get_logger())
        tf = create_tf_interfaces(node, use_tf2_ros(params.tf_backend),
                                  on_bad_transform=lambda text: log('bad_tf', text))
        try:
            stream = PoseStream(FrameProcessor(alignments, calibrations,
                                               processor_settings(params)),
                                fusion_config(params, correlations))
            outputs = OutputPublishers(node, params, stats)
        except BaseException:
            tf.close()  # configure fails: leave nothing behind
            raise
        return cls(params, localizer, stream, tf, node.get_logger(), stats, outputs,
                   MapOdomBroadcaster(tf.broadcaster, params),
                   lambda: node.get_clock().now().nanoseconds, input_topic, correlations,
                   camera_input)

    def reject(self, reason: str, text: str, level: str = 'warn') -> None:
        """Log why a frame gave no output (throttled per reason), then count it.

        Logged first, so that whoever sees the count in /diagnostics finds the line in the log.
        """
        self._log(reason, text, level)
        self._stats.rejected(reason, text)

    def on_error(self, error: Exception) -> None:
        """Count and log a frame that raised unexpectedly (the worker goes on)."""
        self._log('inference_error', f'frame failed: {error!r}', 'error')
        self._stats.rejected('inference_error', repr(error))

    def process(self, msg: Union[Image, CompressedImage]) -> None:
        """Decode, localize, look up TF, gate and publish one image."""
        params = self.params
        started = time.perf_counter()
        self._stats.frame_processed()
        stamp_ns = stamp_to_ns(msg.header.stamp)
        generation = self._follow_clock_jumps()
        if self._from_old_time_line(stamp_ns):
            self.reject(CLOCK_JUMP, f'dropped a frame stamped {stamp_ns * 1e-9:.3f} s: it belongs '
                        'to the time line before the clock jumped back')
            return
        age_s = (self._now_ns() - stamp_ns) * 1e-9
        if params.max_image_age > 0.0 and age_s > params.max_image_age:
            self.reject('stale', f'dropped a frame {age_s:.3f} s old (max_image_age '
                        f'{params.max_image_age:.3f} s)')
            return
        try:
            rgb = (self.decoder.raw(msg) if isinstance(msg, Image)
                   else self.decoder.compressed(msg))
        except ImageConversionError as error:
            # Throttle per kind of problem (numbers masked), so a new problem is always logged.
            self._log('bad_image:' + re.sub(r'\d+', '#', str(error)),
                      f'skipped an image on {self._input_topic}: {error}', 'warn')
            self._stats.rejected('bad_image', str(error))
            return
        decode_ms = (time.perf_counter() - started) * 1e3
        camera = self.camera_input.decide(stamp_ns, rgb.shape[1], rgb.shape[0])
        if camera.reject:
            self.reject(camera.reject, f'skipped a frame: {camera.status}')
            return
        try:
            result = self.localizer.localize(rgb, camera.camera)
        except ValueError as error:
            self.reject(NON_FINITE, f'skipped a frame: {error}')
            return
        timings = self.localizer.timings
        self._stats.scene_seen(result.scene_name, result.scene_confidence,
                               dict(zip(self.localizer.scene_names,
                                        result.scene_probabilities.tolist())))
        camera_frame = msg.header.frame_id or params.camera_frame_id
        tf_start = time.perf_counter()
        T_base_cam = self._camera_in_base(params, camera_frame, stamp_ns)
        if T_base_cam is None:
            return
        try:
            T_odom_base = self.odom_to_base(stamp_ns)
        except TransformUnavailable as error:
            self.reject('tf_unavailable', f'skipped a frame: {error}')
            return
        stream_start = time.perf_counter()
        try:
            output = self.stream.step(result.scene_name, result.scene_confidence,
                                      result.position, result.orientation, T_base_cam,
                                      T_odom_base, stamp_ns)
        except NonFiniteEstimate as error:
            self.reject(NON_FINITE, f'skipped a frame: {error}')
            return
        stream_ms = (time.perf_counter() - stream_start) * 1e3
        if generation != self._jumps:
            self.reject(CLOCK_JUMP, 'dropped a frame in flight while the clock jumped back')
            return
        publish_start = time.perf_counter()
        self._publish(params, output, stamp_ns,
                      Transform(np.asarray(result.position), np.asarray(result.orientation)),
                      T_odom_base)
        done = time.perf_counter()
        # Only frames that went the whole way, all stages at once: the stages add up to 'total'
        # over the same frames, and a benchmark can subtract two reports exactly.
        self._stats.frame_timed({
            'decode': decode_ms, 'preprocess': timings.preprocess_ms,
            'inference': timings.inference_ms, 'tf': (stream_start - tf_start) * 1e3,
            'pose_stream': stream_ms, 'publish': (done - publish_start) * 1e3,
            'total': (done - started) * 1e3})

    def _publish(self, params: NodeParams, output, stamp_ns: int, T_scene_cam: Transform,
                 T_odom_base: Transform) -> None:
        estimate = output.estimate
        if estimate.scene_confidence >= params.min_scene_confidence:
            self.outputs.scene(estimate, T_scene_cam, stamp_ns)
        if not output.published:
            self.reject(estimate.decision.reason, estimate.decision.detail, level='info')
            return
        fused = output.fused
        if fused is not None:
            if not fused.accepted:
                self._log('fusion_gated', f'fusion kept this frame out: {fused.detail}', 'info')
            self._stats.fusion_window(fused.window_size)
        if estimate.relocalized:  # the fusion restarted on it (pose_stream): so do these
            self.filter_updates.reset()
        update = self.filter_updates.offer(estimate.scene_name, stamp_ns, T_odom_base,
                                           estimate.covariance)
        if update.publish:
            self.outputs.pose_update(estimate.T_map_base, update.covariance,
                                     params.global_frame_id, stamp_ns)
        self._stats.pose_update(update.publish, f'{update.reason}: {update.detail}')
        # TF before the pose (a consumer can transform with it), the pose last of all outputs.
        self.map_odom.accepted(output.T_map_odom, stamp_ns)
        self.outputs.pose(estimate, output.T_map_base, output.covariance,
                          params.global_frame_id, stamp_ns)
        self._stats.pose_published(stamp_ns)

    def update_params(self, params: NodeParams) -> None:
        """Use new parameters; a changed fusion configuration restarts the fusion."""
        self.params = params
        self.processor.update_settings(processor_settings(params))
        self.outputs.update_params(params)
        self.map_odom.update_params(params)
        correlations = error_correlation_models(params, self.localizer)
        self._stats.error_correlation(correlations.describe(params))
        self.filter_updates.configure(correlations.models, correlations.default,
                                      params.pose_update_max_correlation)
        if self.stream.reconfigure(fusion_config(params, correlations)):
            self.restart_fusion()

    def restart_fusion(self) -> None:
        """Empty the fusion window and forget the last ``~/pose_update`` of every scene.

        On activation after a pause (the samples are old), a prior, a clock jump, a new fusion
        configuration. The last fix and ``map -> odom`` are kept, as AMCL keeps its estimate:
        the robot's odometry carried on while the node was inactive, so the correction still
        holds and Nav2 keeps a map frame.
        """
        self.stream.restart_fusion()
        self.filter_updates.reset()
        self._stats.fusion_window(0)

    def on_clock_jump(self, now_ns: int, delta_ns: int) -> None:
        """Restart after the node clock jumped back by ``-delta_ns`` to ``now_ns`` (executor).

        TF history and ``map -> odom`` stamps go now (the steady re-broadcast must not keep
        the old stamps); the worker restarts the pose stream before its next frame.
        """
        old_now_ns = now_ns - delta_ns
        with self._jump_lock:
            self._jumps += 1
            # Frames stamped nearer the old time line than the new one are from before it.
            self._old_time_line_after_ns = now_ns + (old_now_ns - now_ns) // 2
        self.map_odom.reset()
        self.outputs.reset_time()
        self.tf.listener.clear()
        if self.odom_buffer is not None:
            self.odom_buffer.clear(keep_static=True)
        self._logger.warning(
            f'the clock jumped back from {old_now_ns * 1e-9:.3f} s to {now_ns * 1e-9:.3f} s '
            '(bag loop, simulator reset): cleared TF history, map -> odom, the fusion window '
            'and the initial pose; localizing afresh in the new time line')

    def _follow_clock_jumps(self) -> int:
        """Restart the pose stream after a clock jump (worker thread); return the jump count."""
        with self._jump_lock:
            jumps = self._jumps
        if jumps != self._jumps_handled:
            self._jumps_handled = jumps
            self.processor.reset()
            self.restart_fusion()
        return jumps

    def _from_old_time_line(self, stamp_ns: int) -> bool:
        with self._jump_lock:
            boundary = self._old_time_line_after_ns
            if boundary is None:
                return False
            if self._now_ns() >= boundary:  # the new time line has caught up: rule done
                self._old_time_line_after_ns = None
                return False
        return stamp_ns > boundary

    def request_relocalization(self) -> None:
        """Accept the next confident frame whatever the jumps and the initial pose; seed AMCL."""
        self.processor.request_relocalization()
        # Forced: AMCL can be confidently wrong (a kidnapped robot), which its covariance hides.
        self.outputs.arm_seed(force=True)
        self._logger.info('relocalization requested: jump limits and initial pose skipped for '
                          'the next confident frame')

    def close(self) -> None:
        """Destroy the publishers and the TF endpoints (cleanup)."""
        self.outputs.destroy()
        self.tf.close()

    def on_odometry(self, msg) -> None:
        """Store ``odom -> base`` from a ``nav_msgs/Odometry`` (``use_odom_topic``)."""
        params = self.params
        parent, child, stamp_ns, transform = odometry_transform(msg)
        if (parent, child) != (params.odom_frame_id, params.base_frame_id):
            self._log('odom_frames', f"odom topic gives '{parent}' -> '{child}', expected "
                      f"'{params.odom_frame_id}' -> '{params.base_frame_id}'; using it as such")
        try:
            self.odom_buffer.set_transform(params.odom_frame_id, params.base_frame_id,
                                           stamp_ns, transform)
        except ValueError as error:
            self._log('odom_bad', f'ignored odometry message: {error}')

    def on_amcl_pose(self, msg) -> None:
        """Hand AMCL's pose to the seeding, which sees whether AMCL is lost and our seed took.

        The seed is moved along by odometry to AMCL's stamp before the two are compared; the
        executor never waits, so ``odom -> base`` is only peeked at.
        """
        if self.outputs.seeding is not None:
            params = self.params
            self.outputs.seeding.amcl_pose(
                msg, params.global_frame_id, params.seed_amcl,
                lambda stamp_ns: self.odom_to_base(stamp_ns, timeout=0.0))

    def on_initialpose(self, msg) -> None:
        """Hold an RViz 2D Pose Estimate (or any initial pose) as the prior."""
        if self.outputs.is_own_seed(msg):
            return
        try:
            T_map_base, covariance = prior_from_msg(msg, self.params, self.tf.listener)
        except (TransformUnavailable, ValueError) as error:
            self._logger.warning(
                f'ignoring initialpose in frame {msg.header.frame_id!r}: {error}')
            return
        self.set_prior(T_map_base, covariance, 'initialpose')

    def set_prior(self, T_map_base: Transform, covariance, source: str) -> None:
        """Hold an initial pose (``source`` names it in logs); restart the fusion from it."""
        T_odom_base = None
        try:
            T_odom_base = self.odom_to_base(None, timeout=0.0)
        except TransformUnavailable as error:
            self._logger.warning(f'{source}: {error}; the prior is taken as fixed in odom')
        try:
            self.processor.set_prior(T_map_base, covariance, T_odom_base)
        except ValueError as error:
            self._logger.warning(f'ignoring {source}: {error}')
            return
        self.restart_fusion()
        self._logger.info(f'{source} prior set at '
                          f'{describe(T_map_base, self.params.global_frame_id)}')

    def odom_to_base(self, stamp_ns: Optional[int], timeout: Optional[float] = None
                     ) -> Transform:
        """``T_odom_base`` at ``stamp_ns`` (None: latest) from TF or the odom topic.

        Waits up to ``timeout`` (default ``transform_timeout``); only the worker may wait.
        """
        params = self.params
        if not params.odom_frame_id:
            return Transform.identity()
        timeout = params.transform_timeout if timeout is None else timeout
        if self.odom_buffer is not None:
            return lookup_or_raise(self.odom_buffer, params.odom_frame_id,
                                   params.base_frame_id, stamp_ns, timeout)
        return self.tf.listener.lookup(params.odom_frame_id, params.base_frame_id, stamp_ns,
                                       timeout)

    def _camera_in_base(self, params: NodeParams, camera_frame: str,
                        stamp_ns: int) -> Optional[Transform]:
        """``T_base_cam`` at the image stamp from TF, or an explicit ``camera_to_base``.

        Looked up for every frame, never cached: a camera on a moving joint (pan-tilt head,
        mast) has a new extrinsic at every stamp, and a static one costs tf2 one lookup.
        Returns None (the frame is rejected, both frames named) when neither is available.
        """
        if camera_frame == params.base_frame_id:
            return Transform.identity()
        fallback = params.camera_to_base
        if camera_frame:
            # With an explicit fallback, wait for TF only until it is first used; then peek.
            timeout = (0.0 if fallback and camera_frame in self._fallback_logged
                       else params.transform_timeout)
            try:
                return self.tf.listener.lookup(params.base_frame_id, camera_frame, stamp_ns,
                                               timeout)
            except TransformUnavailable as error:
                reason = str(error)
        else:
            reason = (f"no transform '{params.base_frame_id}' <- '' : the image has no "
                      'frame_id and camera_frame_id is empty')
        if not fallback:
            self.reject(NO_EXTRINSIC, f'skipped a frame: {reason}; publish the camera '
                        'extrinsic on /tf or /tf_static, or set camera_to_base')
            return None
        if camera_frame not in self._fallback_logged:
            self._fallback_logged.add(camera_frame)
            self._logger.warning(
                f'{reason}; using the camera_to_base parameter {list(fallback)} '
                'as the camera pose in the base frame')
        return Transform.from_xyz_rpy(fallback[:3], fallback[3:])
