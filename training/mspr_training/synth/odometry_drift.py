"""Wheel odometry with realistic, seeded drift for the rendered world's recordings.

A real robot's ``odom -> base_link`` is integrated from wheel encoders (and often a gyro): smooth,
but wrong by an error that grows with distance and time. The localizer's job is to correct it, so
the rendered recordings carry such an odometry rather than the true motion: fusion is measured
against a robot that does not know its odometry is wrong.

Model, per frame, applied to the true motion increment ``D = inv(T_map_base[k-1]) T_map_base[k]``
(expressed in the base frame, so errors follow the robot's own axes):

- **scale error** ``scale_error``: the translation of ``D`` is multiplied by ``1 + scale_error``
  (a wheel radius off by that fraction). Default 0.015: 1.5 % of distance, the middle of the
  1-2 % a calibrated differential-drive base typically shows.
- **heading drift** ``heading_drift_deg_per_min``: a constant yaw-rate bias (gyro bias or a
  wheel-base error), integrated over time about the base z axis. Default 1.0 deg/min, a
  consumer MEMS gyro after bias calibration.
- **noise**: a random walk, independent per frame: translation noise with standard deviation
  ``translation_noise_m`` per square-root metre travelled (per axis), heading noise
  ``heading_noise_deg`` per square-root metre travelled. Defaults 0.005 m/sqrt(m) and
  0.2 deg/sqrt(m): centimetres and about a degree over a 30 m loop, below the systematic terms.
- ``seed`` draws the noise (the rendered world's seed by default), so the same world gives the
  same recording.

``OdometryDrift.none()`` gives perfect odometry (``T_odom_base = inv(T_map_odom0) T_map_base``).

A jump of the true pose between sequences (the recording moves to another scene) is not motion
the wheels measured: the odometry takes it over unchanged, so the accumulated drift carries on and
the true ``map -> odom`` stays continuous across the jump.

The true ``T_map_odom(t) = T_map_base(t) inv(T_odom_base(t))`` is what a perfect localizer would
publish; the recording keeps it as ground truth (``mspr_training.synth.rosbag_writer``).
"""
from dataclasses import asdict, dataclass
import math

import numpy as np
from scipy.spatial.transform import Rotation

from mspr_ros.geometry.transforms import Transform


@dataclass(frozen=True)
class OdometryDrift:
    """Parameters of the odometry error model (module docstring); units in the names."""

    scale_error: float = 0.015
    heading_drift_deg_per_min: float = 1.0
    translation_noise_m: float = 0.005
    heading_noise_deg: float = 0.2
    seed: int | None = None

    def __post_init__(self):
        """Reject non-finite values and negative noise levels."""
        values = (self.scale_error, self.heading_drift_deg_per_min, self.translation_noise_m,
                  self.heading_noise_deg)
        if not all(math.isfinite(v) for v in values):
            raise ValueError(f'odometry drift parameters must be finite, got {self}')
        if self.translation_noise_m < 0 or self.heading_noise_deg < 0:
            raise ValueError(f'odometry noise levels must be >= 0, got {self}')
        if self.scale_error <= -1:
            raise ValueError(f'scale_error must be > -1, got {self.scale_error}')

    @classmethod
    def none(cls) -> 'OdometryDrift':
        """Return perfect odometry (no scale error, no heading drift, no noise)."""
        return cls(0.0, 0.0, 0.0, 0.0)

    @property
    def is_zero(self) -> bool:
        """Whether the odometry is perfect."""
        return not any((self.scale_error, self.heading_drift_deg_per_min,
                        self.translation_noise_m, self.heading_noise_deg))

    def with_seed(self, seed: int) -> 'OdometryDrift':
        """Return the same model with ``seed`` when none was set."""
        if self.seed is not None:
            return self
        return OdometryDrift(self.scale_error, self.heading_drift_deg_per_min,
                             self.translation_noise_m, self.heading_noise_deg, seed)

    def to_dict(self) -> dict:
        """Return the parameters as a JSON-ready dict."""
        return asdict(self)


class DriftingOdometry:
    """Integrates true base poses into a drifting ``T_odom_base`` (module docstring)."""

    def __init__(self, drift: OdometryDrift, T_map_odom_start: Transform):
        """Start with odometry that is exact at the first pose: ``T_map_odom = T_map_odom_start``.

        Args:
            drift: the error model; its ``seed`` (None: 0) draws the noise.
            T_map_odom_start: the true ``map -> odom`` when odometry starts.
        """
        self.drift = drift
        self.rng = np.random.default_rng([16, 0 if drift.seed is None else drift.seed])
        self.T_map_odom_start = T_map_odom_start
        self.T_odom_base = None
        self._last_true = None
        #: Distance the wheels travelled so far (m), for the odometry covariance.
        self.distance_m = 0.0

    def step(self, T_map_base: Transform, dt_s: float, measured: bool = True) -> Transform:
        """Advance to the true pose ``T_map_base`` after ``dt_s`` seconds; return ``T_odom_base``.

        ``measured`` False takes the true increment over without error (a jump between
        sequences that the wheels did not drive).
        """
        if self.T_odom_base is None:
            self.T_odom_base = self.T_map_odom_start.inverse() @ T_map_base
        else:
            increment = self._last_true.inverse() @ T_map_base
            if measured:
                increment = self._perturb(increment, dt_s)
            self.T_odom_base = self.T_odom_base @ increment
        self._last_true = T_map_base
        return self.T_odom_base

    def _perturb(self, increment: Transform, dt_s: float) -> Transform:
        """Return the increment as the drifting odometry measures it."""
        drift = self.drift
        distance = float(np.linalg.norm(increment.translation))
        self.distance_m += distance
        root = math.sqrt(distance)
        translation = ((1.0 + drift.scale_error) * increment.translation
                       + self.rng.normal(0.0, drift.translation_noise_m * root, 3))
        yaw_error_deg = (drift.heading_drift_deg_per_min * dt_s / 60.0
                         + self.rng.normal(0.0, drift.heading_noise_deg * root))
        rotation = increment.rotation_object * Rotation.from_euler('z', yaw_error_deg,
                                                                   degrees=True)
        return Transform.from_rotation(translation, rotation)

    def covariance(self) -> np.ndarray:
        """Return the 6 x 6 pose covariance the noise model implies now (x y z roll pitch yaw).

        What a wheel-odometry driver reports: the random-walk variance grown with distance; the
        systematic terms are unknown to the robot, so they are not in it.
        """
        position_variance = self.drift.translation_noise_m ** 2 * self.distance_m
        yaw_variance = math.radians(self.drift.heading_noise_deg) ** 2 * self.distance_m
        # Roll and pitch are not measured by wheels; a floor keeps the matrix invertible.
        floor = 1e-9
        return np.diag([position_variance + floor] * 3 + [floor, floor, yaw_variance + floor])
