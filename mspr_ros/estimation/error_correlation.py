"""How alike the regression errors of two frames are, as a function of what changed the view.

An absolute pose regressor's error is a function of the image: two frames of nearly the same view
err nearly alike, whatever the time between them. A robot standing still for ten seconds sends
300 copies of one error; counting them as 300 measurements shrinks the fused covariance ~17x
while the error stays (issue 25). This module is the one model of that correlation, used by the
fusion (``mspr_ros.estimation.fusion``), by the filter updates and fitted by ``mspr-export``
(``mspr_training.correlation_fit``) from the errors along held-out walks.

The correlation of the (whitened) errors of frames ``i`` and ``j``:

    rho_ij = floor + (1 - floor) * exp(-(d_ij / length_m + a_ij / angle_rad + t_ij / time_s))

with ``d_ij`` the distance between the two camera (or base) positions in metres, ``a_ij`` the
angle of the rotation between their orientations in radians and ``t_ij`` the time between them
in seconds; ``rho_ii = 1``. An infinite length means that component never decorrelates the
errors (it adds nothing to the exponent); a length of 0 means any two distinct frames are
independent through it (the exponent is infinite, even for a zero change). ``floor`` is the
part of the error that never decays within a scene (a bias the whole scene shares): the mean of
any number of frames keeps it.

The covariance of an information-weighted mean of ``N`` samples with correlated errors is that
of independent samples times the design factor (Kish's design effect for a weighted mean)

    factor = sum_ij sqrt(w_i w_j) rho_ij / sum_i w_i,

``w_i`` being each sample's scalar information (``det(C_i^-1)^(1/d)``). It is 1 for independent
samples and at most ``N`` (Cauchy-Schwarz) when all are fully correlated: frames of one view
never count as more than one measurement, and for equal covariances a window of identical views
gets exactly the one frame's covariance. With a shared bias (``floor = b / (b + n)`` of a bias
variance ``b`` and a noise variance ``n``) the mean of ``N`` equal samples gets ``b + n / N``,
which is the true variance of that mean.

Per block. Position and rotation errors need not decorrelate alike (on the rendered worlds the
rotation errors of nearby frames are less alike than the position errors:
``benchmarks/correlation_blocks.py``). A model may then carry the rotation block's own model
(``rotation``); its own fields are the position block's. The fusion gives each block its own
design factor (a block's covariance times its factor, the cross terms times the geometric mean
of the two: ``D C D`` with ``D`` the per-axis square roots, which keeps it a covariance), and the
filter updates take the block that is the more alike. A model without ``rotation`` serves both.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from functools import cached_property
import math
from typing import Any, Mapping, Optional, Sequence

import numpy as np
from scipy.spatial.distance import cdist

from mspr_ros.geometry.covariance import BLOCK_AXES

#: The kinds of model (``ErrorCorrelation.source``), for logs, diagnostics and the bundle.
SOURCES = ('bundle', 'time', 'independent', 'one_frame', 'fitted', 'parameters')
#: The blocks of a 6-D pose error a model may describe apart (ROS order: position first).
BLOCKS = tuple(BLOCK_AXES)


def _ratio_term(change: np.ndarray, length: float) -> np.ndarray:
    """Return ``change / length`` with ``x / inf = 0`` and ``x / 0 = inf`` (also for x = 0)."""
    if math.isinf(length):
        return np.zeros_like(change, dtype=np.float64)
    if length == 0.0:
        return np.full_like(change, np.inf, dtype=np.float64)
    return np.asarray(change, dtype=np.float64) / length


def _length(value: Any, name: str) -> float:
    """Return a length (>= 0, ``inf`` allowed; ``None`` means ``inf``) or raise ValueError."""
    if value is None:
        return math.inf
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if math.isnan(number) or number < 0.0:
        raise ValueError(f'error correlation {name} must be >= 0 (or null for infinite), '
                         f'got {value!r}')
    return number


@dataclass(frozen=True)
class ErrorCorrelation:
    """The correlation model of the module docstring.

    Attributes:
        length_m: metres of camera travel over which the errors decorrelate by ``1/e``.
        angle_rad: radians of camera rotation over which they decorrelate by ``1/e``.
        time_s: seconds over which they decorrelate by ``1/e`` (a fallback when nothing
            better is known: a still robot's errors do not decorrelate with time).
        floor: correlation that never decays (a bias shared by the scene), in [0, 1].
        source: where the model comes from (one of ``SOURCES``).
        rotation: the rotation block's own model (the fields above are then the position
            block's); None: this model serves both blocks.
    """

    length_m: float = math.inf
    angle_rad: float = math.inf
    time_s: float = math.inf
    floor: float = 1.0
    source: str = 'one_frame'
    rotation: Optional['ErrorCorrelation'] = None

    def __post_init__(self) -> None:
        """Validate; raise ValueError naming the bad field."""
        for name in ('length_m', 'angle_rad', 'time_s'):
            object.__setattr__(self, name, _length(getattr(self, name), name))
        floor = float(self.floor)
        if not 0.0 <= floor <= 1.0:
            raise ValueError(f'error correlation floor must be in [0, 1], got {self.floor!r}')
        object.__setattr__(self, 'floor', floor)
        if self.source not in SOURCES:
            raise ValueError(f'error correlation source must be one of {SOURCES}, '
                             f'got {self.source!r}')
        if self.rotation is not None and (not isinstance(self.rotation, ErrorCorrelation)
                                          or self.rotation.rotation is not None):
            raise ValueError('error correlation rotation must be an ErrorCorrelation without a '
                             f'rotation block of its own, got {self.rotation!r}')

    @property
    def per_block(self) -> bool:
        """Return whether the rotation block has a model of its own."""
        return self.rotation is not None

    @cached_property
    def blocks(self) -> tuple['ErrorCorrelation', ...]:
        """Return the distinct block models: ``(self,)``, or position's and rotation's.

        Made once per model: the filter updates ask on every frame.
        """
        if self.rotation is None:
            return (self,)
        return (replace(self, rotation=None), self.rotation)

    def block(self, name: str) -> 'ErrorCorrelation':
        """Return the model of block ``name`` ('position' or 'rotation', ``BLOCKS``)."""
        if name not in BLOCKS:
            raise ValueError(f'error correlation block must be one of {BLOCKS}, got {name!r}')
        return self.blocks[-1] if name == 'rotation' else self.blocks[0]

    @classmethod
    def independent(cls) -> 'ErrorCorrelation':
        """Return the model of independent frames (each frame a new measurement)."""
        return cls(0.0, 0.0, 0.0, 0.0, 'independent')

    @classmethod
    def one_frame(cls) -> 'ErrorCorrelation':
        """Return the model where every frame errs alike: a window is worth one frame.

        The honest default when nothing was learned: the fusion still rejects outliers and
        smooths, but never claims more than one frame's covariance.
        """
        return cls(math.inf, math.inf, math.inf, 1.0, 'one_frame')

    @classmethod
    def from_time(cls, time_s: float) -> 'ErrorCorrelation':
        """Return the time-only model (``rho = exp(-dt / time_s)``); 0 means independent."""
        if float(time_s) == 0.0:
            return cls.independent()
        return cls(math.inf, math.inf, time_s, 0.0, 'time')

    @property
    def is_independent(self) -> bool:
        """Return whether two distinct frames are never correlated (in either block)."""
        return all(block._decorrelates_at_once for block in self.blocks)

    @property
    def _decorrelates_at_once(self) -> bool:
        """Return whether this model's own fields make any two distinct frames independent."""
        return self.floor == 0.0 and 0.0 in (self.length_m, self.angle_rad, self.time_s)

    def correlation(self, distance_m: Any, angle_rad: Any, time_s: Any = 0.0) -> np.ndarray:
        """Return ``rho`` of frames (not the same frame) that differ by the given changes.

        Arrays broadcast; every change must be >= 0. The position block's with ``rotation``.
        """
        exponent = (_ratio_term(np.asarray(distance_m, dtype=np.float64), self.length_m)
                    + _ratio_term(np.asarray(angle_rad, dtype=np.float64), self.angle_rad)
                    + _ratio_term(np.asarray(time_s, dtype=np.float64), self.time_s))
        return self.floor + (1.0 - self.floor) * np.exp(-exponent)

    def matrix(self, positions: np.ndarray, quats: np.ndarray,
               stamps_ns: Optional[np.ndarray] = None) -> np.ndarray:
        """Return the (N, N) correlation of N frames (1 on the diagonal); position's per block.

        Args:
            positions: (N, 3) positions of the frames in one frame of reference (metres).
            quats: (N, 4) their orientations, xyzw quaternions in that frame.
            stamps_ns: (N,) their stamps; None leaves time out.
        """
        positions = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
        quats = np.asarray(quats, dtype=np.float64).reshape(-1, 4)
        count = len(positions)
        if self._decorrelates_at_once:
            return np.eye(count)
        # The fusion asks on every frame: a change whose length is infinite adds 0 to the
        # exponent, so it is not computed.
        exponent = np.zeros((count, count))
        if not math.isinf(self.length_m):
            exponent += _ratio_term(cdist(positions, positions), self.length_m)
        if not math.isinf(self.angle_rad):
            exponent += _ratio_term(_rotation_angles(quats), self.angle_rad)
        if stamps_ns is not None and not math.isinf(self.time_s):
            stamps = np.asarray(stamps_ns, dtype=np.int64)   # exact differences, then seconds
            exponent += _ratio_term(np.abs(np.subtract.outer(stamps, stamps)) / 1e9, self.time_s)
        rho = np.exp(np.negative(exponent, out=exponent), out=exponent)
        if self.floor > 0.0:
            rho *= 1.0 - self.floor
            rho += self.floor
        np.fill_diagonal(rho, 1.0)
        return rho

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON form (infinite lengths as ``None``; ``rotation`` only when set)."""
        plain = {item.name: getattr(self, item.name) for item in fields(self)
                 if item.name != 'rotation'}
        value = {name: (None if isinstance(v, float) and math.isinf(v) else v)
                 for name, v in plain.items()}
        if self.rotation is not None:
            value['rotation'] = self.rotation.to_dict()
        return value

    @classmethod
    def from_dict(cls, value: Mapping[str, Any], source: Optional[str] = None
                  ) -> 'ErrorCorrelation':
        """Return the model of :meth:`to_dict`'s form; raise ValueError naming what is wrong."""
        if not isinstance(value, Mapping):
            raise ValueError(f'error correlation must be a mapping, got {type(value).__name__}')
        unknown = sorted(set(value) - {'length_m', 'angle_rad', 'time_s', 'floor', 'source',
                                       'rotation'})
        if unknown:
            raise ValueError(f'error correlation has unknown fields {unknown}')
        if 'floor' not in value:
            raise ValueError('error correlation has no floor')
        rotation = value.get('rotation')
        if rotation is not None:
            if isinstance(rotation, Mapping) and 'rotation' in rotation:
                raise ValueError('error correlation rotation must not have a rotation block')
            rotation = cls.from_dict(rotation, source)
        return cls(value.get('length_m'), value.get('angle_rad'), value.get('time_s'),
                   value['floor'], source or value.get('source', 'bundle'), rotation)


def _rotation_angles(quats: np.ndarray) -> np.ndarray:
    """Return the (N, N) angles of the rotations between N xyzw quaternions, in [0, pi].

    ``4 atan2(|p - q|, |p + q|)``, ``q`` signed to the side of ``p`` (the smaller of the two
    distances): the angle between them in 4-D is twice ``atan2``'s, the rotation's twice that.
    Not ``2 arccos(|p . q|)``, which turns the rounding of a dot product of 1 into ~1e-8 rad:
    frames of one view must correlate exactly as the model says (a standing robot's window is
    then exactly one frame). ``cdist`` takes each difference in C, ~10x numpy's broadcasting.
    """
    quats = quats / np.linalg.norm(quats, axis=-1, keepdims=True)
    apart, opposite = cdist(quats, quats), cdist(quats, -quats)
    return 4.0 * np.arctan2(np.minimum(apart, opposite), np.maximum(apart, opposite))


def scene_correlation(scenes: Sequence[str], models: Mapping[str, ErrorCorrelation],
                      default: ErrorCorrelation, positions: np.ndarray, quats: np.ndarray,
                      stamps_ns: Optional[np.ndarray] = None,
                      block: str = 'position') -> np.ndarray:
    """Return the (N, N) correlation of N frames, each seen in one of several scenes.

    Frames of one scene correlate by that scene's model (``default`` where ``models`` has
    none), its ``block``'s for a per-block model; frames of two scenes never do: the
    regressor's errors in one scene say nothing of another's. The other arguments are
    :meth:`ErrorCorrelation.matrix`'s.
    """
    if block == 'rotation':   # a model's own fields (what ``matrix`` uses) are position's
        models = {scene: model.block(block) for scene, model in models.items()}
        default = default.block(block)
    elif block not in BLOCKS:
        raise ValueError(f'error correlation block must be one of {BLOCKS}, got {block!r}')
    scenes = np.asarray(scenes, dtype=object)
    positions = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
    quats = np.asarray(quats, dtype=np.float64).reshape(-1, 4)
    stamps = None if stamps_ns is None else np.asarray(stamps_ns)
    if len(scenes) == 0 or (scenes == scenes[0]).all():   # the usual window: one scene
        model = models.get(scenes[0] if len(scenes) else '', default)
        return model.matrix(positions, quats, stamps)
    rho = np.zeros((len(scenes), len(scenes)))
    for scene in dict.fromkeys(scenes.tolist()):
        rows = np.flatnonzero(scenes == scene)
        rho[np.ix_(rows, rows)] = models.get(scene, default).matrix(
            positions[rows], quats[rows], None if stamps is None else stamps[rows])
    return rho


def scalar_information(informations: np.ndarray) -> np.ndarray:
    """Return ``det(I)^(1/d)`` of (N, d, d) information matrices (0 where singular)."""
    dimension = informations.shape[-1]
    sign, logdet = np.linalg.slogdet(informations)
    return np.where(sign > 0, np.exp(logdet / dimension), 0.0)


def design_factor(rho: np.ndarray, weights: np.ndarray) -> float:
    """Return ``sum_ij sqrt(w_i w_j) rho_ij / sum_i w_i`` (the module docstring), >= 1."""
    weights = np.asarray(weights, dtype=np.float64)
    return float(design_factors(rho, weights, np.ones((1, len(weights)), dtype=bool))[0])


def design_factors(rho: np.ndarray, weights: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Return the (P,) ``design_factor`` of the frames each of P boolean masks selects.

    Args:
        rho: (N, N) correlation of N frames.
        weights: (N,) their scalar informations.
        masks: (P, N) bool, the subsets (one call for all: the fusion's means share frames).

    Computed as ``1 + (off-diagonal sum) / sum_i w_i``: exactly 1 for independent frames, so
    that the independent model gives the fused covariance of independent frames to the bit.
    """
    weights = np.asarray(weights, dtype=np.float64)
    masks = np.asarray(masks, dtype=bool).reshape(-1, len(weights))
    roots = masks * np.sqrt(weights)
    off_diagonal = np.asarray(rho, dtype=np.float64) - np.eye(len(weights))
    totals = masks @ weights
    pairs = ((roots @ off_diagonal) * roots).sum(axis=-1)
    return np.where(totals > 0.0, np.maximum(1.0 + pairs / np.where(totals > 0.0, totals, 1.0),
                                             1.0), 1.0)


#: Values of the node's ``fusion.error_correlation`` parameter (and the bag tools' replay).
MODES = ('bundle', 'time', 'independent')


def mode_default(mode: str, time_s: float) -> ErrorCorrelation:
    """Return the model ``mode`` gives a scene without a learned one (see below).

    Raises:
        ValueError: an unknown mode, or 'time' without a positive ``time_s``.
    """
    if mode == 'independent':
        return ErrorCorrelation.independent()
    if mode == 'time':
        if not (math.isfinite(float(time_s)) and float(time_s) > 0.0):
            raise ValueError("fusion.error_correlation 'time' needs fusion.error_correlation_s "
                             f'> 0, got {time_s!r}')
        return ErrorCorrelation.from_time(time_s)
    if mode != 'bundle':
        raise ValueError(f'error correlation mode must be one of {MODES}, got {mode!r}')
    return ErrorCorrelation.one_frame()


def resolve_error_correlation(mode: str, time_s: float,
                              learned: Mapping[str, ErrorCorrelation],
                              scenes: Sequence[str]) -> tuple[dict[str, ErrorCorrelation],
                                                              list[str]]:
    """Return the model of every scene and the scenes that fell back to ``one_frame``.

    Args:
        mode: 'bundle' (the models ``mspr-export`` learned; a scene without one gets the
            honest ``one_frame`` model and is listed), 'time' (``exp(-dt / time_s)`` for every
            scene, ``time_s > 0``) or 'independent' (every frame a new measurement: the old
            behaviour, over-confident on real regressions).
        time_s: the correlation time of 'time'.
        learned: scene -> model, from the bundle (``Bundle.error_correlation``).
        scenes: the bundle's scene names.

    Raises:
        ValueError: an unknown mode, or 'time' without a positive ``time_s``.
    """
    default = mode_default(mode, time_s)
    if mode != 'bundle':
        return {scene: default for scene in scenes}, []
    missing = [scene for scene in scenes if scene not in learned]
    return {scene: learned.get(scene, default) for scene in scenes}, missing
