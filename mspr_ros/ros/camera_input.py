"""The node's camera input: ``camera_info`` messages in, the camera each frame is read with out.

The rule is the core's :class:`mspr_ros.camera.selection.CameraSelection` (``camera_model``:
auto, require, ignore); this module converts the messages, feeds it, and reports its state to
``/diagnostics`` (key ``camera``). The reprojection of a camera is built once by the localizer
(``Localizer.reprojection``) the first time a frame needs it, then reused for every frame.
"""
import math
import time

from sensor_msgs.msg import CameraInfo

from mspr_ros.camera.reprojection import MIN_COVERAGE
from mspr_ros.camera.selection import CameraDecision, CameraSelection
from mspr_ros.camera.topics import camera_info_topic
from mspr_ros.ros.conversions import camera_from_info, stamp_to_ns
from mspr_ros.ros.logs import ThrottledLog

#: How often an image without camera_info asks whether a publisher is on the topic (s).
PUBLISHER_CHECK_PERIOD_S = 1.0


class CameraInput:
    """Pairs images with their ``camera_info`` by the ``camera_model`` parameter."""

    def __init__(self, node, params, localizer, input_topic: str, stats) -> None:
        """Prepare the rule for images on ``input_topic`` (a resolved name).

        Raises:
            ValueError: ``camera_model`` is 'require' and the bundle has no training camera.
        """
        topic = params.camera_info_topic or camera_info_topic(input_topic)
        self.topic = node.resolve_topic_name(topic)
        self.mode = params.camera_model
        self.selection = CameraSelection(
            params.camera_model, self.topic, localizer.training_camera_problem,
            lambda camera: localizer.reprojection(camera).coverage, MIN_COVERAGE)
        self._log = ThrottledLog(node.get_logger())
        self._stats = stats
        self._localizer = localizer
        self._node = node
        self._params = params
        self._publisher, self._publisher_checked = False, -math.inf
        # Before any camera_info arrives: what the rule says of an image now.
        stats.camera(self.selection.decide(0, 0, 0).status, False, 0)
        if localizer.training_camera is None and self.mode != 'ignore':
            node.get_logger().warning(f'cannot check the camera of the images: '
                                      f'{localizer.training_camera_problem}; they are resized '
                                      'and cropped as they come')

    def _publisher_seen(self) -> bool:
        """Return whether a publisher is on the topic, asking the ROS graph at most once a second.

        Asked for every frame, the graph query slowed the node down (measured: a burst of frames
        without camera_info left one frame in the fusion window where it holds several).
        """
        now = time.monotonic()
        if now - self._publisher_checked >= PUBLISHER_CHECK_PERIOD_S:
            self._publisher_checked = now
            self._publisher = self._node.count_publishers(self.topic) > 0
        return self._publisher

    @property
    def subscribes(self) -> bool:
        """Whether the node reads ``camera_info`` at all."""
        return self.mode != 'ignore'

    def on_camera_info(self, msg: CameraInfo) -> None:
        """Remember a message's camera; a message stating no valid camera is logged and skipped."""
        try:
            camera = camera_from_info(msg)
        except ValueError as error:
            self._log('bad_camera_info', f'skipped a camera_info on {self.topic}: {error}',
                      'warn')
            return
        self.selection.offer(stamp_to_ns(msg.header.stamp), camera)

    def decide(self, stamp_ns: int, width: int, height: int) -> CameraDecision:
        """Return how the image is read, and report the camera state.

        Called on the frame worker: an image whose ``camera_info`` is expected but not here yet
        waits for it up to ``camera_info_timeout`` while the executor keeps receiving
        (``CameraSelection.wait_for``).
        """
        if self.subscribes:
            self.selection.wait_for(stamp_ns, self._params.camera_info_timeout,
                                    self._publisher_seen)
        decision = self.selection.decide(stamp_ns, width, height)
        self._stats.camera(decision.status, decision.warning, self._localizer.reprojection_builds)
        return decision
