"""When to re-seed AMCL: its own covariance says it is lost, and it was not seeded just now.

Beside AMCL (``config/setup_amcl.yaml``) AMCL owns ``map -> odom`` and our node only seeds it
through ``initialpose``: after a relocalization, and when AMCL's ``amcl_pose`` covariance grows
beyond what a tracking particle filter reports (a kidnapped robot, a bad start, a featureless
corridor). The interval keeps a seed from following a seed: right after one, AMCL reports
roughly the covariance it was given.
"""
from dataclasses import dataclass
import math
from typing import Optional

import numpy as np

NS_PER_S = 1_000_000_000


@dataclass(frozen=True)
class AmclSeedPolicy:
    """Thresholds on AMCL's reported uncertainty, and the least time between two seeds.

    Attributes:
        position_stddev_m: seed when AMCL's x or y standard deviation exceeds this.
        yaw_stddev_rad: seed when AMCL's yaw standard deviation exceeds this.
        min_interval_s: never seed again sooner than this after the last seed.
    """

    position_stddev_m: float = 0.5
    yaw_stddev_rad: float = 0.35
    min_interval_s: float = 10.0

    def __post_init__(self) -> None:
        """Validate; raise ValueError naming the bad field."""
        for name in ('position_stddev_m', 'yaw_stddev_rad'):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0.0):
                raise ValueError(f'{name} must be finite and > 0, got {value!r}')
        if not (math.isfinite(self.min_interval_s) and self.min_interval_s >= 0.0):
            raise ValueError(f'min_interval_s must be finite and >= 0, got '
                             f'{self.min_interval_s!r}')

    def reason(self, amcl_covariance, now_ns: int, last_seed_ns: Optional[int]
               ) -> Optional[str]:
        """Return why AMCL should be seeded now, or None.

        Args:
            amcl_covariance: AMCL's 6x6 pose covariance (x, y, z, roll, pitch, yaw).
            now_ns: the current time.
            last_seed_ns: when the last seed was published, None if never.

        Raises:
            ValueError: a covariance that is not 6x6 or not finite.
        """
        covariance = np.asarray(amcl_covariance, dtype=np.float64)
        if covariance.shape != (6, 6) or not np.all(np.isfinite(covariance)):
            raise ValueError(f'AMCL covariance must be a finite 6x6 matrix, got shape '
                             f'{covariance.shape}')
        position = math.sqrt(max(covariance[0, 0], covariance[1, 1], 0.0))
        yaw = math.sqrt(max(covariance[5, 5], 0.0))
        if position <= self.position_stddev_m and yaw <= self.yaw_stddev_rad:
            return None
        if last_seed_ns is not None and now_ns - last_seed_ns < self.min_interval_s * NS_PER_S:
            return None
        return (f'AMCL reports position stddev {position:.2f} m, yaw stddev {yaw:.2f} rad '
                f'(thresholds {self.position_stddev_m} m, {self.yaw_stddev_rad} rad)')
