"""``map -> odom`` on /tf by the one stamping rule.

The rule is ``mspr_ros.estimation.tf_stamping`` (see the node module docstring): the accept
path and the steady re-broadcast share one ``MapOdomStamps`` and stamp and send under one lock,
so messages leave in stamp order whichever thread sends.
"""
import threading

from mspr_ros.estimation.tf_stamping import MapOdomStamps, StampedCorrection
from mspr_ros.geometry.transforms import Transform
from mspr_ros.ros.conversions import transform_to_msg
from mspr_ros.ros.params import NodeParams


def tolerance_ns(params: NodeParams) -> int:
    """``transform_tolerance`` in nanoseconds."""
    return int(round(params.transform_tolerance * 1e9))


class MapOdomBroadcaster:
    """Broadcasts the newest accepted ``map -> odom`` by the one stamping rule."""

    def __init__(self, tf_broadcaster, params: NodeParams):
        """Send through ``tf_broadcaster`` (``mspr_ros.ros.tf`` interface)."""
        self._broadcaster = tf_broadcaster
        self._params = params
        self._stamps = MapOdomStamps(tolerance_ns(params))
        self._send_lock = threading.Lock()

    def update_params(self, params: NodeParams) -> None:
        """Frames, tolerance and ``tf_broadcast`` changed at run time."""
        self._params = params
        self._stamps.tolerance_ns = tolerance_ns(params)

    def reset(self) -> None:
        """Forget the correction (activation)."""
        self._stamps.reset()

    @property
    def latest(self):
        """The newest correction and its last stamp, or None."""
        return self._stamps.latest

    def accepted(self, T_map_odom: Transform, image_stamp_ns: int) -> None:
        """Stamp and (with ``tf_broadcast``) send a newly accepted correction."""
        with self._send_lock:
            self._send(self._stamps.accept(T_map_odom, image_stamp_ns))

    def rebroadcast(self, now_ns: int) -> None:
        """Re-send the newest correction, stamped forward (steady TF rate)."""
        with self._send_lock:
            correction = self._stamps.rebroadcast(now_ns)
            if correction is not None:
                self._send([correction])

    def _send(self, corrections: 'list[StampedCorrection]') -> None:
        params = self._params
        if not params.tf_broadcast:
            return
        child = params.odom_frame_id or params.base_frame_id
        self._broadcaster.send([
            transform_to_msg(c.transform, params.global_frame_id, child, c.stamp_ns)
            for c in corrections])
