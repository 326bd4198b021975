"""The settings of the odometry-aided fusion (``mspr_ros.estimation.fusion``).

Its window, gate, robust loss, odometry drift and error correlation models, validated where they
are made; the fusion's module docstring says what each one does there.
"""
from dataclasses import dataclass, field
import math
from typing import Mapping

from scipy.stats import chi2

from mspr_ros.estimation.error_correlation import ErrorCorrelation
from mspr_ros.estimation.fusion_robust import LOSSES


@dataclass(frozen=True)
class FusionConfig:
    """Fusion parameters (see ``mspr_ros.estimation.fusion``'s docstring for what each trades).

    Attributes:
        window_s: seconds; samples older than this, relative to the newest, leave the window.
        window_distance_m: metres of odometry travelled since a sample after which it leaves.
        max_samples: at most this many samples (accepted and rejected) are kept.
        robust_loss: ``cauchy`` or ``huber``.
        gate_mahalanobis: Mahalanobis distance (not squared) of a new sample to the current
            estimate above which it is rejected. Default: the 99.9 % quantile of chi-square
            with 6 dof (4.74); with ``two_d`` the same distance is a 99.99 % gate for 3 dof.
        two_d: SE(2): z, roll, pitch of samples and estimate are 0.
        odometry_drift_per_m: odometry's relative position drift: a sample taken ``s`` metres
            of travel ago gets ``(odometry_drift_per_m * s)^2`` added to each position variance
            (m^2); 0.02 = 2 cm of 1-sigma drift per metre, a wheel odometry on indoor floors
            (a wheel radius off by 2 %).
        odometry_rotation_drift_per_m: odometry's orientation drift per metre travelled (rad):
            ``(odometry_rotation_drift_per_m * s)^2`` is added to each orientation variance
            (rad^2). 0.01 rad (0.57 degrees) per metre: a differential drive whose wheels differ
            in diameter by 0.5 % on a 0.5 m wheel base, uncalibrated and without a gyro (a gyro
            drifts far less). It was the position figure, 0.02, until the two were separated;
            metres per metre and radians per metre are different quantities.
        error_correlation: scene name -> how alike the errors of two frames of that scene are
            (``ErrorCorrelation``, the fusion's docstring); it scales the fused covariance only.
        default_correlation: the model of the scenes ``error_correlation`` does not name (and
            of scene ``''``). ``one_frame()`` by default: with nothing learned a window never
            claims more than one frame. Both replace ``error_correlation_s`` (issue 25).
    """

    window_s: float = 10.0
    window_distance_m: float = 15.0
    max_samples: int = 30
    robust_loss: str = 'cauchy'
    gate_mahalanobis: float = math.sqrt(float(chi2.ppf(0.999, 6)))
    two_d: bool = False
    odometry_drift_per_m: float = 0.02
    odometry_rotation_drift_per_m: float = 0.01
    error_correlation: Mapping[str, ErrorCorrelation] = field(default_factory=dict)
    default_correlation: ErrorCorrelation = ErrorCorrelation.one_frame()

    def __post_init__(self) -> None:
        """Validate; raise ValueError naming the bad field."""
        for name in ('window_s', 'window_distance_m', 'gate_mahalanobis'):
            value = float(getattr(self, name))
            if not (math.isfinite(value) and value > 0.0):
                raise ValueError(f'{name} must be finite and > 0, got {getattr(self, name)!r}')
        models = self.error_correlation
        if not isinstance(models, Mapping) or not all(
                isinstance(scene, str) and isinstance(model, ErrorCorrelation)
                for scene, model in models.items()):
            raise ValueError('error_correlation must map scene names to ErrorCorrelation, got '
                             f'{models!r}')
        object.__setattr__(self, 'error_correlation', dict(models))   # frozen: not the caller's
        if not isinstance(self.default_correlation, ErrorCorrelation):
            raise ValueError('default_correlation must be an ErrorCorrelation, got '
                             f'{self.default_correlation!r}')
        for name in ('odometry_drift_per_m', 'odometry_rotation_drift_per_m'):
            drift = float(getattr(self, name))
            if not (math.isfinite(drift) and drift >= 0.0):
                raise ValueError(f'{name} must be finite and >= 0, got {getattr(self, name)!r}')
        if isinstance(self.max_samples, bool) or int(self.max_samples) != self.max_samples \
                or self.max_samples < 1:
            raise ValueError(f'max_samples must be an integer >= 1, got {self.max_samples!r}')
        if self.robust_loss not in LOSSES:
            raise ValueError(f'robust_loss must be one of {LOSSES}, got {self.robust_loss!r}')
