"""The AMCL seed over ROS: ``initialpose`` out, ``amcl_pose`` in, re-sends on a timer.

The decisions (when to seed, whether a seed took, when to re-send or give up) are the core's
``mspr_ros.estimation.amcl_seeder.AmclSeeder`` (its rules: ``mspr_ros.estimation.amcl_seed``).
This shell feeds it from two threads (the inference worker offers poses; the executor delivers
``amcl_pose`` and runs the re-send timer), so every call, and the publish it returns, runs under
one lock: a re-send can never overtake the seed it follows, and ``is_own_seed`` knows a message
before it can arrive.

Nav2's AMCL subscribes to ``initialpose`` reliable and volatile (``SystemDefaultsQoS``): a seed
published before AMCL subscribed is lost, whatever our durability (DDS keeps no history for a
volatile reader), hence the re-sends until ``amcl_pose`` shows the seed.
"""
from collections import deque
import threading
from typing import Callable, Optional, Tuple

from geometry_msgs.msg import PoseWithCovarianceStamped

from mspr_ros.estimation.amcl_seed import AmclSeedPolicy, PlanarEstimate
from mspr_ros.estimation.amcl_seeder import AmclSeeder, Note, SeedStep
from mspr_ros.geometry.transforms import Transform
from mspr_ros.ros import interface
from mspr_ros.ros.conversions import covariance_from_msg, pose_from_msg, stamp_to_ns
from mspr_ros.ros.logs import ThrottledLog
from mspr_ros.ros.tf import TransformUnavailable

# The re-send timer's period (s): re-sends fall due every seed_amcl_retry_period, checked this
# often, so the period can change at run time without a new timer.
TICK_S = 0.1
# Seeds remembered for is_own_seed: more than one series of re-sends, so that a message still
# on its way back to our own initialpose subscription is known.
OWN_SEEDS_REMEMBERED = 64


class AmclSeeding:
    """Publishes the AMCL seed, re-sends it until it took, reports the state."""

    def __init__(self, node, policy: AmclSeedPolicy, stats=None, watch_amcl: bool = True):
        """Create the ``initialpose`` lifecycle publisher and the re-send timer on ``node``.

        ``stats``: a ``LocalizationStats`` that carries the state to /diagnostics.
        ``watch_amcl``: ``amcl_pose`` is subscribed to; without it a seed goes out once (nothing
        could show that it took, and each re-send resets AMCL's particle cloud again).
        """
        self._node = node
        self._stats = stats
        self._log = ThrottledLog(node.get_logger())
        self._lock = threading.Lock()
        self._seeder = AmclSeeder(policy, watch_amcl)
        self._sent: deque = deque(maxlen=OWN_SEEDS_REMEMBERED)
        self.publisher = node.create_lifecycle_publisher(
            PoseWithCovarianceStamped, interface.INITIALPOSE_TOPIC, interface.INITIALPOSE_QOS)
        self._timer = node.create_timer(TICK_S, self.tick) if watch_amcl else None
        self._report()

    def update_policy(self, policy: AmclSeedPolicy) -> None:
        """Use new thresholds, interval, retry period and attempts (parameters changed)."""
        with self._lock:
            self._seeder.policy = policy
            self._report()

    def arm(self, force: bool = False, any_frame: bool = False) -> None:
        """Seed AMCL with the next relocalized pose (``any_frame``: the next pose).

        ``force``: even where AMCL's covariance is tighter (an explicit relocalization request).
        """
        with self._lock:
            self._seeder.arm(force=force, any_frame=any_frame)
            self._report()

    def pose_published(self, msg: PoseWithCovarianceStamped, T_map_base: Transform,
                       covariance, relocalized: bool) -> None:
        """Offer ``msg``, about to go out on ``~/pose``, as the seed or its next re-send."""
        pose = PlanarEstimate.from_pose(T_map_base.translation[0], T_map_base.translation[1],
                                        T_map_base.yaw(), covariance,
                                        stamp_to_ns(msg.header.stamp))
        with self._lock:
            self._run(self._seeder.pose_published(pose, msg, relocalized, self._now_ns()))

    def amcl_pose(self, msg: PoseWithCovarianceStamped, global_frame_id: str,
                  policy: AmclSeedPolicy,
                  odom_to_base: Callable[[int], Transform]) -> None:
        """Take AMCL's ``amcl_pose`` (executor thread).

        ``odom_to_base(stamp_ns)`` returns ``T_odom_base`` at a stamp without waiting, or raises
        ``TransformUnavailable``: the seed is moved along by odometry to AMCL's stamp before
        the two are compared.
        """
        if msg.header.frame_id.lstrip('/') != global_frame_id:
            self._log('amcl_pose_frame', f"ignored amcl_pose in frame '{msg.header.frame_id}': "
                      f"seeds and amcl_pose must both be in '{global_frame_id}'")
            return
        try:
            T_map_base = pose_from_msg(msg.pose.pose)
            amcl = PlanarEstimate.from_pose(T_map_base.translation[0], T_map_base.translation[1],
                                            T_map_base.yaw(), covariance_from_msg(msg),
                                            stamp_to_ns(msg.header.stamp))
        except ValueError as error:
            self._log('amcl_pose_bad', f'ignored an amcl_pose message: {error}')
            return
        with self._lock:
            self._seeder.policy = policy
            seed_stamp_ns = self._seeder.reference_stamp_ns
        # Looked up outside the lock (TF may take a moment); the seeder ignores the motion if
        # a new seed went out meanwhile.
        motion = None if seed_stamp_ns is None else _odometry_between(
            odom_to_base, seed_stamp_ns, amcl.stamp_ns)
        with self._lock:
            self._run(self._seeder.amcl_reported(amcl, self._now_ns(), motion, seed_stamp_ns))

    def tick(self) -> None:
        """Re-send a seed that did not take, or give up (timer, executor thread)."""
        if not self.publisher.is_activated:
            return  # inactive: nothing goes out (activation arms a new seed)
        with self._lock:
            self._run(self._seeder.tick(self._now_ns()))

    def is_own_seed(self, msg: PoseWithCovarianceStamped) -> bool:
        """Return True for an ``initialpose`` this node published itself (any re-send)."""
        with self._lock:
            return any(header == msg.header and pose == msg.pose for header, pose in self._sent)

    def reset_time(self) -> None:
        """Cancel the seed in flight and forget old stamps: the node clock jumped back."""
        with self._lock:
            self._seeder.reset_time()
            self._report()

    def destroy(self) -> None:
        """Destroy the timer and the publisher."""
        if self._timer is not None:
            self._node.destroy_timer(self._timer)
        self._node.destroy_lifecycle_publisher(self.publisher)

    def _run(self, step: SeedStep) -> None:
        """Publish and log what the seeder decided (under the lock), then report the state."""
        if step.send is not None:
            msg = step.send
            self._sent.append((msg.header, msg.pose))
            self.publisher.publish(msg)
        if step.note is not None:
            self._write(step.note)
        self._report()

    def _write(self, note: Note) -> None:
        if note.throttle:
            self._log(note.key, note.text, note.level)
        elif note.level == 'warn':
            self._node.get_logger().warning(note.text)
        else:
            self._node.get_logger().info(note.text)

    def _report(self) -> None:
        if self._stats is not None:
            status = self._seeder.status()
            self._stats.amcl_seed(status.key_values(), status.warning)

    def _now_ns(self) -> int:
        return self._node.get_clock().now().nanoseconds


def _odometry_between(odom_to_base: Callable[[int], Transform], from_ns: int,
                      to_ns: int) -> Optional[Tuple[float, float, float]]:
    """Return the base motion from ``from_ns`` to ``to_ns`` (dx, dy, dyaw), or None.

    dx, dy are in the base frame at ``from_ns``; None when odometry does not cover both stamps.
    """
    try:
        delta = odom_to_base(from_ns).inverse() @ odom_to_base(to_ns)
    except TransformUnavailable:
        return None
    return float(delta.translation[0]), float(delta.translation[1]), delta.yaw()
