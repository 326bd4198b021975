"""The AMCL seeding state machine: arm, send, watch ``amcl_pose``, re-send, give up (ROS-free).

The rules it applies (tighter than AMCL, took, re-send with the newest pose, not twice in a row)
and why are in ``mspr_ros.estimation.amcl_seed``. One seed and its re-sends form a series; the
state (``idle``, ``armed``, ``waiting``, ``took``, ``gave_up``, ``declined``, ``cancelled``,
``sent``) and the numbers of the last series go to /diagnostics through ``SeedStatus``.
"""
from dataclasses import dataclass, field
import math
from typing import Any, Optional, Tuple

from mspr_ros.estimation.amcl_seed import AmclSeedPolicy, is_tighter, NS_PER_S, PlanarEstimate
from mspr_ros.estimation.amcl_seed import seed_distance, seed_took

IDLE, ARMED, WAITING, TOOK, SENT = 'idle', 'armed', 'waiting', 'took', 'sent'
GAVE_UP, DECLINED, CANCELLED = 'gave_up', 'declined', 'cancelled'


@dataclass(frozen=True)
class Note:
    """A line for the log: ``level`` ('info', 'warn'), ``throttle`` it per ``key`` or not."""

    level: str
    key: str
    text: str
    throttle: bool = False


@dataclass(frozen=True)
class SeedStep:
    """What to do now: publish ``send`` (the payload given with the pose) and log ``note``."""

    send: Any = None
    note: Optional[Note] = None


@dataclass(frozen=True)
class SeedStatus:
    """The seeding state for /diagnostics."""

    state: str
    attempts: int
    max_attempts: int
    last_sent_ns: Optional[int]
    detail: str
    amcl: Optional[PlanarEstimate]

    @property
    def warning(self) -> str:
        """Non-empty when the set-up needs a look: AMCL did not take the seed."""
        return self.detail if self.state == GAVE_UP else ''

    def key_values(self) -> Tuple[Tuple[str, str], ...]:
        """Stable diagnostic keys and their values."""
        return (
            ('amcl seed', self.state),
            ('amcl seed attempts', f'{self.attempts}/{self.max_attempts}'),
            ('amcl seed last sent', ('never' if self.last_sent_ns is None
                                     else f'{self.last_sent_ns * 1e-9:.9f}')),
            ('amcl seed detail', self.detail),
            ('amcl pose stddev', ('not heard' if self.amcl is None
                                  else self.amcl.describe_spread())),
        )


@dataclass
class _Series:
    """One seed and its re-sends."""

    seed: PlanarEstimate
    forced: bool
    first_sent_ns: int
    last_sent_ns: int
    attempts: int = 1


@dataclass
class _Pending:
    """What the next published pose should seed AMCL for."""

    relocalized: bool = False  # activation, relocalization: with the next relocalized pose
    lost: bool = False  # AMCL is lost: with the next pose, relocalized or not
    forced: bool = False  # skip the tighter rule (an explicit relocalization request)


@dataclass
class AmclSeeder:
    """The seeding state machine; not thread-safe (the shell holds a lock around it).

    Times are the node clock in ns (sim time aware); ``reset_time`` after it jumps back.
    ``watch_amcl`` False (no ``amcl_pose`` topic): nothing can show whether a seed took, so each
    goes out once (state ``sent``) and is never re-sent; a re-send resets AMCL's particle cloud
    again, which only a seed known not to have arrived is worth.
    """

    policy: AmclSeedPolicy = field(default_factory=AmclSeedPolicy)
    watch_amcl: bool = True

    def __post_init__(self) -> None:
        """Start idle, AMCL not heard."""
        self._pending = _Pending()
        self._amcl: Optional[PlanarEstimate] = None
        self._newest: Optional[Tuple[PlanarEstimate, Any]] = None
        self._series: Optional[_Series] = None
        self._last_sent_ns: Optional[int] = None
        self._state = IDLE
        self._detail = ''

    @property
    def state(self) -> str:
        """Return the state name.

        ``idle``, ``armed``, ``waiting`` (sent, not taken yet), ``took``, ``gave_up``,
        ``declined`` (AMCL's estimate was tighter), ``cancelled`` (clock jump) or ``sent``
        (without ``watch_amcl``: sent once, not followed).
        """
        return self._state

    @property
    def reference_stamp_ns(self) -> Optional[int]:
        """Stamp of the seed in flight (for the odometry to an AMCL stamp), None if none."""
        return self._series.seed.stamp_ns if self._state == WAITING else None

    def status(self) -> SeedStatus:
        """Return the state for /diagnostics."""
        series = self._series
        return SeedStatus(self._state, series.attempts if series else 0,
                          self.policy.max_attempts, self._last_sent_ns, self._detail,
                          self._amcl)

    def arm(self, force: bool = False, any_frame: bool = False) -> None:
        """Seed AMCL with the next relocalized pose (``any_frame``: with the next pose).

        ``force``: whatever AMCL's covariance (an explicit relocalization request).
        """
        if any_frame:
            self._pending.lost = True
        else:
            self._pending.relocalized = True
        self._pending.forced = self._pending.forced or force
        if self._state != WAITING:
            self._set(ARMED, 'forced: AMCL\'s covariance is not consulted' if force
                      else 'waiting for a pose to seed AMCL with')

    def pose_published(self, pose: PlanarEstimate, payload: Any, relocalized: bool,
                       now_ns: int) -> SeedStep:
        """Seed AMCL with a pose the node publishes on ``~/pose``, if armed and tighter."""
        self._newest = (pose, payload)
        pending = self._pending
        if not ((pending.relocalized and relocalized) or pending.lost):
            return SeedStep()
        forced = pending.forced
        self._pending = _Pending()
        amcl = self._amcl
        if not forced and amcl is not None and not is_tighter(pose.covariance,
                                                              amcl.covariance):
            self._set(DECLINED, f"AMCL's estimate ({amcl.describe_spread()}) is at least as "
                      f"tight as ours ({pose.describe_spread()}): not seeding it")
            return SeedStep(note=Note('info', 'amcl_seed_declined', self._detail, True))
        self._series = _Series(pose, forced, now_ns, now_ns)
        self._last_sent_ns = now_ns
        why = ('forced' if forced else 'AMCL not heard yet' if amcl is None
               else f"tighter than AMCL's {amcl.describe_spread()}")
        if self.watch_amcl:
            self._set(WAITING, f'sent attempt 1/{self.policy.max_attempts} '
                      f'({pose.describe_spread()}; {why})')
        else:
            self._set(SENT, f'sent once ({pose.describe_spread()}; {why}); no amcl_pose topic '
                      'to show whether it took')
        return SeedStep(payload, Note('info', 'amcl_seed_sent',
                                      f'seeding AMCL on initialpose at x {pose.x:.2f} m, '
                                      f'y {pose.y:.2f} m, yaw {pose.yaw:.2f} rad '
                                      f'({pose.describe_spread()}; {why})'))

    def amcl_reported(self, amcl: PlanarEstimate, now_ns: int,
                      motion: Optional[Tuple[float, float, float]] = None,
                      motion_from_ns: Optional[int] = None) -> SeedStep:
        """Take AMCL's new ``amcl_pose``: see whether the seed took and whether AMCL is lost.

        ``motion``: the odometry (dx, dy, dyaw, in the base frame at ``motion_from_ns``) from
        ``motion_from_ns`` to AMCL's stamp; used only when ``motion_from_ns`` is the stamp of the
        seed in flight (the shell looked it up without the lock).
        """
        self._amcl = amcl
        series = self._series
        if self._state == WAITING:
            # Only an estimate made after the first send can show the seed.
            if amcl.stamp_ns < series.first_sent_ns:
                return SeedStep()
            if motion_from_ns != series.seed.stamp_ns:
                motion = None
            if seed_took(series.seed, amcl, motion):
                self._set(TOOK, f'AMCL took the seed after {series.attempts} send(s): its '
                          f'estimate is {math.sqrt(seed_distance(series.seed, amcl, motion)):.2f}'
                          f' sigma from it ({amcl.describe_spread()})')
                return SeedStep(note=Note('info', 'amcl_seed_took', self._detail))
            if not series.forced and not is_tighter(series.seed.covariance, amcl.covariance):
                self._set(DECLINED, f"AMCL's new estimate ({amcl.describe_spread()}) is as "
                          'tight as the seed and not at it: stopped re-sending')
                return SeedStep(note=Note('info', 'amcl_seed_declined', self._detail, True))
            reason = self.policy.lost_reason(amcl)
            if reason is None:
                return SeedStep()
            # Still lost after the seed went out: the re-sends carry the newest pose.
            return SeedStep(note=Note('info', 'amcl_seed', f'{reason}: seeding it with the next '
                                      f'pose (the seed not taken yet is re-sent with the '
                                      f'newest, {series.attempts}/{self.policy.max_attempts} '
                                      'sent)', True))
        reason = self.policy.lost_reason(amcl)
        if reason is None:
            self._pending.lost = False  # AMCL recovered by itself
            if self._state == ARMED and not self._pending.relocalized:
                self._set(IDLE, '')
            return SeedStep()
        if self._pending.lost or self.policy.too_soon(now_ns, self._last_sent_ns):
            return SeedStep()
        self.arm(any_frame=True)
        return SeedStep(note=Note('info', 'amcl_seed', f'{reason}: seeding it with the next '
                                  'pose tighter than its estimate', True))

    def tick(self, now_ns: int) -> SeedStep:
        """Re-send a seed that has not taken, or give up; call it often (a timer)."""
        if self._state != WAITING:
            return SeedStep()
        series, policy = self._series, self.policy
        if now_ns < series.last_sent_ns:  # the clock went back before reset_time: restart
            series.last_sent_ns = now_ns
        if now_ns - series.last_sent_ns < policy.retry_period_s * NS_PER_S:
            return SeedStep()
        if series.attempts >= policy.max_attempts:
            waited = (now_ns - series.first_sent_ns) * 1e-9
            self._set(GAVE_UP, f'AMCL did not take the seed: no amcl_pose at it after '
                      f'{series.attempts} send(s) over {waited:.1f} s; is AMCL active and '
                      'subscribed to initialpose in this namespace?')
            return SeedStep(note=Note('warn', 'amcl_seed_gave_up', f'giving up: {self._detail}'))
        pose, payload = self._newest
        amcl = self._amcl
        if not series.forced and amcl is not None and not is_tighter(pose.covariance,
                                                                     amcl.covariance):
            self._set(DECLINED, f"AMCL's estimate ({amcl.describe_spread()}) is at least as "
                      f'tight as our newest pose ({pose.describe_spread()}): stopped re-sending')
            return SeedStep(note=Note('info', 'amcl_seed_declined', self._detail, True))
        series.seed = pose
        series.attempts += 1
        series.last_sent_ns = self._last_sent_ns = now_ns
        self._set(WAITING, f'sent attempt {series.attempts}/{policy.max_attempts} '
                  f'({pose.describe_spread()}): no amcl_pose at the seed yet')
        return SeedStep(payload, Note('info', 'amcl_seed_resent',
                                      f're-sent the AMCL seed, {self._detail}', True))

    def reset_time(self) -> None:
        """Drop what is stamped in the old time line: the node clock jumped back.

        The seed in flight, AMCL's estimate, the newest pose and the last send time are from
        the old time line (a bag loop, a simulator reset); kept, the re-send timing and the
        ``min_interval_s`` wait would freeze until the clock caught up. Armed requests stay.
        """
        if self._state == WAITING:
            self._set(CANCELLED, 'the clock jumped back: the seed in flight belonged to the '
                      'old time line')
        self._amcl = None
        self._newest = None
        self._last_sent_ns = None

    def _set(self, state: str, detail: str) -> None:
        self._state, self._detail = state, detail
