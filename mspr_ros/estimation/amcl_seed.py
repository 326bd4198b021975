"""When and how the node seeds AMCL through ``initialpose``, and whether the seed took (ROS-free).

Beside AMCL (``config/setup_amcl.yaml``) AMCL owns ``map -> odom`` and our node only seeds it
through ``initialpose``: after a relocalization (activation, ``~/relocalize``), and when AMCL's
``amcl_pose`` covariance grows beyond what a tracking particle filter reports (a kidnapped
robot, a bad start, a featureless corridor). A seed resets AMCL's whole particle cloud to the
seed's Gaussian, so:

1. **A seed goes out only when it is tighter than AMCL** (``is_tighter``): our x, y, yaw
   covariance must be smaller than AMCL's latest in the Loewner order, i.e. ``C_amcl - C_ours``
   positive definite: every linear combination of x, y and yaw (each axis, and every direction
   of a correlated ellipse) has a smaller variance in ours; equivalently our 1-sigma ellipsoid
   lies inside AMCL's. It implies "each of the x, y and yaw standard deviations smaller", and
   adds the correlations AMCL reports between x and y (a particle cloud stretched along a
   corridor). Unlike a trace (which adds m^2 to rad^2) it does not depend on units, and unlike
   a determinant it never trades: a seed much tighter in position but looser in yaw would throw
   away yaw AMCL knew. AMCL not heard yet counts as infinitely loose: the seed goes out. An
   explicit ``~/relocalize`` may force the seed (``arm(force=True)``): the operator asks for
   it because AMCL can be confidently wrong (a kidnapped robot keeps a tight cloud in the wrong
   place), which its covariance cannot show.
2. **A seed is re-sent until it took** (``AmclSeeder.tick``): Nav2's AMCL subscribes to
   ``initialpose`` reliable and *volatile*, so a seed published before it subscribed (AMCL
   starting later, discovery not finished) is lost, and a transient-local publisher would not
   help: DDS gives no history to volatile readers. The seed took when AMCL publishes an
   ``amcl_pose`` stamped at or after the first send, within ``TOOK_GATE`` (Mahalanobis, x, y,
   yaw) of the seed moved along by odometry to that stamp, with a spread no wider than
   ``TOOK_STDDEV_RATIO`` times the seed's (a lost cloud that merely happens to centre near the
   seed does not count). Until then the seed is re-sent every ``retry_period_s``, at most
   ``max_attempts`` sends in all, then given up. Each re-send carries the **newest published
   pose**, not the first one again: AMCL moves an initial pose from its stamp to now with an
   odometry TF lookup, which fails (and AMCL then drops the odometric correction) once the stamp
   has left its TF cache (10 s) or when ``now`` is ahead of the latest odometry, so a fresh stamp
   keeps that gap small; the newest pose also has the most frames fused into it. It must still
   pass rule 1 (unless the seed was forced), and a new AMCL estimate tighter than ours that is
   not at the seed stops the re-sends (AMCL is confident elsewhere: rule 1 again).
3. **Not twice in a row**: after a seed AMCL reports roughly the covariance it was given, which
   may still be above the lost thresholds; a new seed for AMCL being lost waits
   ``min_interval_s`` after the last send.

This module holds the rules; ``mspr_ros.estimation.amcl_seeder`` the state machine that applies
them (``AmclSeeder``). The shell (``mspr_ros.ros.amcl_seeding``) publishes what it returns, calls
``tick`` from a timer, and looks up the odometry between two stamps.
"""
from dataclasses import dataclass
import math
from typing import Any, Optional, Tuple

import numpy as np

NS_PER_S = 1_000_000_000
# The 99 % quantile of chi-square with 3 degrees of freedom (x, y, yaw): a pose that took the
# seed lies within it but for 1 % of draws.
TOOK_GATE = 11.345
# Right after taking a seed AMCL's cloud is drawn from the seed's Gaussian: its spread is the
# seed's, give or take sampling noise and the motion noise of a few updates. A lost cloud is
# many times wider.
TOOK_STDDEV_RATIO = 2.0
# x, y, yaw rows of a ROS 6x6 pose covariance: the block AMCL reads and reports.
PLANAR_INDICES = (0, 1, 5)
_PSD_TOLERANCE = 1e-9


@dataclass(frozen=True)
class PlanarEstimate:
    """A pose in the map frame as AMCL sees one: x, y, yaw and their 3x3 covariance."""

    x: float
    y: float
    yaw: float
    covariance: np.ndarray
    stamp_ns: int

    def __post_init__(self) -> None:
        """Validate; raise ValueError naming the problem."""
        covariance = np.asarray(self.covariance, dtype=np.float64)
        if covariance.shape != (3, 3) or not np.all(np.isfinite(covariance)):
            raise ValueError(f'x, y, yaw covariance must be a finite 3x3 matrix, got shape '
                             f'{covariance.shape}')
        if not all(math.isfinite(v) for v in (self.x, self.y, self.yaw)):
            raise ValueError(f'pose must be finite, got x={self.x}, y={self.y}, yaw={self.yaw}')
        covariance = 0.5 * (covariance + covariance.T)
        scale = max(1.0, float(np.abs(covariance).max()))
        if np.linalg.eigvalsh(covariance)[0] < -_PSD_TOLERANCE * scale:
            raise ValueError('x, y, yaw covariance is not positive semi-definite')
        object.__setattr__(self, 'covariance', covariance)

    @classmethod
    def from_pose(cls, x: float, y: float, yaw: float, covariance_6x6: Any,
                  stamp_ns: int) -> 'PlanarEstimate':
        """From a pose and its ROS 6x6 covariance (x, y, z, roll, pitch, yaw)."""
        return cls(float(x), float(y), float(yaw), planar_covariance(covariance_6x6),
                   int(stamp_ns))

    def stddevs(self) -> Tuple[float, float, float]:
        """Return the standard deviations of x (m), y (m) and yaw (rad)."""
        return tuple(math.sqrt(max(v, 0.0)) for v in np.diag(self.covariance))

    def describe_spread(self) -> str:
        """``x 0.50 m, y 0.50 m, yaw 0.10 rad`` (standard deviations)."""
        sx, sy, syaw = self.stddevs()
        return f'x {sx:.3f} m, y {sy:.3f} m, yaw {syaw:.3f} rad'


def planar_covariance(covariance_6x6: Any) -> np.ndarray:
    """Return the x, y, yaw block of a ROS 6x6 pose covariance; ValueError if not finite."""
    covariance = np.asarray(covariance_6x6, dtype=np.float64)
    if covariance.shape != (6, 6) or not np.all(np.isfinite(covariance)):
        raise ValueError(f'pose covariance must be a finite 6x6 matrix, got shape '
                         f'{covariance.shape}')
    return covariance[np.ix_(PLANAR_INDICES, PLANAR_INDICES)]


def is_tighter(ours: np.ndarray, theirs: np.ndarray) -> bool:
    """Return True when covariance ``ours`` is strictly below ``theirs`` (Loewner order).

    ``theirs - ours`` positive definite: in every direction of x, y, yaw our variance is
    smaller (see the module docstring for why this rule).
    """
    difference = np.asarray(theirs, dtype=np.float64) - np.asarray(ours, dtype=np.float64)
    difference = 0.5 * (difference + difference.T)
    scale = max(np.abs(np.asarray(theirs)).max(), np.abs(np.asarray(ours)).max(), 1e-300)
    return bool(np.linalg.eigvalsh(difference)[0] > _PSD_TOLERANCE * scale)


def _wrap(angle: float) -> float:
    return math.atan2(math.sin(angle), math.cos(angle))


def moved_by(seed: PlanarEstimate, motion: Optional[Tuple[float, float, float]]
             ) -> Tuple[float, float, float, np.ndarray]:
    """Move the seed along by an odometric ``motion`` (dx, dy, dyaw in its base frame).

    Returns x, y, yaw and the covariance carried along (the seed's yaw uncertainty swings the
    displaced position). ``motion`` None: the seed as it is.
    """
    if motion is None:
        return seed.x, seed.y, seed.yaw, seed.covariance
    dx, dy, dyaw = motion
    cos, sin = math.cos(seed.yaw), math.sin(seed.yaw)
    x = seed.x + cos * dx - sin * dy
    y = seed.y + sin * dx + cos * dy
    jacobian = np.array([[1.0, 0.0, -sin * dx - cos * dy],
                         [0.0, 1.0, cos * dx - sin * dy],
                         [0.0, 0.0, 1.0]])
    return x, y, _wrap(seed.yaw + dyaw), jacobian @ seed.covariance @ jacobian.T


def seed_distance(seed: PlanarEstimate, amcl: PlanarEstimate,
                  motion: Optional[Tuple[float, float, float]] = None) -> float:
    """Squared Mahalanobis distance of AMCL's pose from the seed (moved by ``motion``)."""
    x, y, yaw, covariance = moved_by(seed, motion)
    error = np.array([amcl.x - x, amcl.y - y, _wrap(amcl.yaw - yaw)])
    try:
        return float(error @ np.linalg.solve(covariance, error))
    except np.linalg.LinAlgError:  # a singular seed covariance: only an exact match counts
        return 0.0 if not np.any(error) else math.inf


def seed_took(seed: PlanarEstimate, amcl: PlanarEstimate,
              motion: Optional[Tuple[float, float, float]] = None) -> bool:
    """Return True when AMCL's estimate is the seed's: within ``TOOK_GATE``, as tight."""
    _, _, _, covariance = moved_by(seed, motion)
    return (seed_distance(seed, amcl, motion) <= TOOK_GATE
            and is_tighter(amcl.covariance, TOOK_STDDEV_RATIO ** 2 * covariance))


@dataclass(frozen=True)
class AmclSeedPolicy:
    """Thresholds on AMCL's reported uncertainty, the spacing of seeds and their re-sends.

    Attributes:
        position_stddev_m: AMCL is lost when its x or y standard deviation exceeds this.
        yaw_stddev_rad: AMCL is lost when its yaw standard deviation exceeds this.
        min_interval_s: never seed a lost AMCL sooner than this after the last send.
        retry_period_s: re-send a seed that did not take after this long.
        max_attempts: sends of one seed in all (1: never re-sent), then give up.
    """

    position_stddev_m: float = 0.5
    yaw_stddev_rad: float = 0.35
    min_interval_s: float = 10.0
    retry_period_s: float = 1.0
    max_attempts: int = 10

    def __post_init__(self) -> None:
        """Validate; raise ValueError naming the bad field."""
        for name in ('position_stddev_m', 'yaw_stddev_rad', 'retry_period_s'):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0.0):
                raise ValueError(f'{name} must be finite and > 0, got {value!r}')
        if not (math.isfinite(self.min_interval_s) and self.min_interval_s >= 0.0):
            raise ValueError(f'min_interval_s must be finite and >= 0, got '
                             f'{self.min_interval_s!r}')
        if isinstance(self.max_attempts, bool) or int(self.max_attempts) != self.max_attempts \
                or self.max_attempts < 1:
            raise ValueError(f'max_attempts must be an integer >= 1, got {self.max_attempts!r}')

    def lost_reason(self, amcl: PlanarEstimate) -> Optional[str]:
        """Why AMCL's estimate says it is lost (spread above the thresholds), or None."""
        sx, sy, syaw = amcl.stddevs()
        position = max(sx, sy)
        if position <= self.position_stddev_m and syaw <= self.yaw_stddev_rad:
            return None
        return (f'AMCL reports position stddev {position:.2f} m, yaw stddev {syaw:.2f} rad '
                f'(thresholds {self.position_stddev_m} m, {self.yaw_stddev_rad} rad)')

    def reason(self, amcl_covariance, now_ns: int, last_seed_ns: Optional[int]
               ) -> Optional[str]:
        """Return why AMCL should be seeded now (lost, not seeded just now), or None.

        Args:
            amcl_covariance: AMCL's 6x6 pose covariance (x, y, z, roll, pitch, yaw).
            now_ns: the current time.
            last_seed_ns: when the last seed was published, None if never.

        Raises:
            ValueError: a covariance that is not 6x6 or not finite.
        """
        reason = self.lost_reason(PlanarEstimate.from_pose(0.0, 0.0, 0.0, amcl_covariance, 0))
        if reason is None or self.too_soon(now_ns, last_seed_ns):
            return None
        return reason

    def too_soon(self, now_ns: int, last_seed_ns: Optional[int]) -> bool:
        """Return True within ``min_interval_s`` after the last send."""
        return (last_seed_ns is not None
                and now_ns - last_seed_ns < self.min_interval_s * NS_PER_S)
