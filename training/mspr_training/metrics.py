"""Localisation metrics of the papers (docs/paper.md section 5.1), shared by every evaluator.

Per image: position error ``||x_est - x_gt||`` (m) and orientation error
``2 acos(|<q_est, q_gt>|)`` (deg, dot clamped, via
``mspr_ros.geometry.transforms.quaternion_angle_deg``).
Per scene, computed independently: median position and median orientation error (``np.median``,
the midpoint of the two middle values), scene-classification accuracy, localisation recall at
(m, deg) thresholds. Over scenes: the average of the per-scene medians (the papers' "average
median"), plus overall accuracy and recall over all images. Timing: median and 95th percentile.
The naive baseline predicts each scene's mean training pose; its errors say how much the network
learned beyond "somewhere in this scene".
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
from scipy.spatial.transform import Rotation

from mspr_ros.geometry.transforms import quaternion_angle_deg

DEFAULT_RECALL_THRESHOLDS = ((0.25, 2.0), (0.5, 5.0), (5.0, 10.0))


def position_errors(estimated: Any, truth: Any) -> np.ndarray:
    """Return Euclidean distances (N,) between positions ``estimated`` and ``truth`` (N, 3)."""
    est = np.asarray(estimated, dtype=np.float64)
    gt = np.asarray(truth, dtype=np.float64)
    if est.shape != gt.shape or est.shape[-1:] != (3,):
        raise ValueError(f'positions must both be N x 3, got {est.shape} and {gt.shape}')
    return np.linalg.norm(est - gt, axis=-1)


def orientation_errors_deg(estimated: Any, truth: Any) -> np.ndarray:
    """Return the paper's orientation errors (N,) in degrees for xyzw quaternions (N, 4).

    ``estimated`` need not be normalised (the network's raw 4-vector); q and -q give 0.
    """
    est = np.asarray(estimated, dtype=np.float64)
    gt = np.asarray(truth, dtype=np.float64)
    if est.shape != gt.shape:
        raise ValueError(f'quaternions must have equal shapes, got {est.shape} and {gt.shape}')
    return np.asarray(quaternion_angle_deg(est, gt), dtype=np.float64)


def recall(position_error: np.ndarray, orientation_error: np.ndarray,
           thresholds: Sequence[tuple[float, float]]) -> list[float]:
    """Return, per (metres, degrees) threshold, the fraction of images within both bounds."""
    if position_error.size == 0:
        return [float('nan')] * len(thresholds)
    return [float(np.mean((position_error <= metres) & (orientation_error <= degrees)))
            for metres, degrees in thresholds]


def threshold_label(metres: float, degrees: float) -> str:
    """Return the label of a recall threshold, e.g. ``0.25m/2deg``."""
    return f'{metres:g}m/{degrees:g}deg'


@dataclass
class TimingStats:
    """Per-image inference time in milliseconds."""

    count: int
    median_ms: float
    p95_ms: float
    mean_ms: float

    @classmethod
    def from_seconds(cls, seconds: Sequence[float]) -> 'TimingStats':
        """Summarise per-image durations given in seconds."""
        ms = np.asarray(seconds, dtype=np.float64) * 1e3
        if ms.size == 0:
            raise ValueError('no timings to summarise')
        return cls(count=int(ms.size), median_ms=float(np.median(ms)),
                   p95_ms=float(np.percentile(ms, 95)), mean_ms=float(ms.mean()))


@dataclass
class NaiveBaseline:
    """Each scene's mean training position (3,) and mean orientation (4, xyzw)."""

    positions: dict[str, np.ndarray]
    orientations: dict[str, np.ndarray]

    @classmethod
    def from_training_poses(cls, poses: Mapping[str, tuple[Any, Any]]) -> 'NaiveBaseline':
        """Build from ``{scene: (positions N x 3, orientations N x 4 xyzw)}``.

        The mean orientation is the chordal L2 mean of the rotations (``Rotation.mean``).
        """
        positions, orientations = {}, {}
        for scene, (scene_positions, scene_orientations) in poses.items():
            scene_positions = np.asarray(scene_positions, dtype=np.float64).reshape(-1, 3)
            if scene_positions.shape[0] == 0:
                raise ValueError(f'scene {scene!r} has no training poses for the baseline')
            positions[scene] = scene_positions.mean(axis=0)
            orientations[scene] = Rotation.from_quat(
                np.asarray(scene_orientations, dtype=np.float64).reshape(-1, 4)).mean().as_quat()
        return cls(positions, orientations)

    def predict(self, scene_names: Sequence[str], scenes: Any) -> tuple[np.ndarray, np.ndarray]:
        """Return baseline poses (N x 3, N x 4) for ground-truth scene indices ``scenes``."""
        names = [scene_names[int(s)] for s in np.asarray(scenes).reshape(-1)]
        missing = sorted(set(names) - set(self.positions))
        if missing:
            raise ValueError(f'naive baseline has no training poses for scenes {missing}')
        return (np.array([self.positions[n] for n in names]).reshape(-1, 3),
                np.array([self.orientations[n] for n in names]).reshape(-1, 4))


@dataclass
class SceneMetrics:
    """Metrics of one scene (errors use the predicted scene, as the papers' test)."""

    scene: str
    images: int
    median_position_m: float
    median_orientation_deg: float
    mean_position_m: float
    mean_orientation_deg: float
    scene_accuracy: float
    recall: dict[str, float]
    baseline_median_position_m: float | None = None
    baseline_median_orientation_deg: float | None = None


@dataclass
class MetricsReport:
    """Per-scene and summary metrics of one evaluation."""

    scenes: list[SceneMetrics]
    average_median_position_m: float
    average_median_orientation_deg: float
    scene_accuracy: float
    recall: dict[str, float]
    thresholds: list[tuple[float, float]]
    timing: TimingStats | None = None
    baseline_average_median_position_m: float | None = None
    baseline_average_median_orientation_deg: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return asdict(self)

    def to_markdown(self) -> str:
        """Return a per-scene Markdown table followed by the averages."""
        labels = [threshold_label(m, d) for m, d in self.thresholds]
        with_baseline = self.baseline_average_median_position_m is not None
        header = ['scene', 'images', 'median pos (m)', 'median rot (deg)', 'scene acc']
        header += [f'recall {label}' for label in labels]
        if with_baseline:
            header += ['naive pos (m)', 'naive rot (deg)']
        rows = [header, ['---'] * len(header)]
        for scene in self.scenes:
            row = [scene.scene, str(scene.images), f'{scene.median_position_m:.3f}',
                   f'{scene.median_orientation_deg:.2f}', f'{scene.scene_accuracy:.3f}']
            row += [f'{scene.recall[label]:.3f}' for label in labels]
            if with_baseline:
                row += [f'{scene.baseline_median_position_m:.3f}',
                        f'{scene.baseline_median_orientation_deg:.2f}']
            rows.append(row)
        average = ['**average**', str(sum(s.images for s in self.scenes)),
                   f'{self.average_median_position_m:.3f}',
                   f'{self.average_median_orientation_deg:.2f}', f'{self.scene_accuracy:.3f}']
        average += [f'{self.recall[label]:.3f}' for label in labels]
        if with_baseline:
            average += [f'{self.baseline_average_median_position_m:.3f}',
                        f'{self.baseline_average_median_orientation_deg:.2f}']
        rows.append(average)
        lines = ['| ' + ' | '.join(row) + ' |' for row in rows]
        notes = ['', 'Medians per scene (predicted scene used); the average row averages the '
                 'per-scene medians; accuracy and recall of that row are over all images.']
        if self.timing is not None:
            notes.append(f'Inference time per image: median {self.timing.median_ms:.1f} ms, '
                         f'p95 {self.timing.p95_ms:.1f} ms ({self.timing.count} images).')
        return '\n'.join(lines + notes) + '\n'


def compute_metrics(scene_names: Sequence[str], gt_scene: Any, gt_position: Any,
                    gt_orientation: Any, pred_scene: Any, pred_position: Any,
                    pred_orientation: Any, *,
                    thresholds: Sequence[tuple[float, float]] = DEFAULT_RECALL_THRESHOLDS,
                    times_s: Sequence[float] | None = None,
                    baseline: NaiveBaseline | None = None) -> MetricsReport:
    """Compute the report for N test images.

    Args:
        scene_names: names in scene-index order.
        gt_scene: int (N,) true scene index; ``pred_scene`` int (N,) predicted one.
        gt_position, pred_position: (N, 3) metres.
        gt_orientation, pred_orientation: (N, 4) xyzw quaternions (the prediction may be
            unnormalised).
        thresholds: (metres, degrees) recall thresholds.
        times_s: optional per-image inference durations in seconds.
        baseline: optional naive baseline (needs every evaluated scene).

    Scenes without test images are left out of the table and the averages.
    """
    gt_scene = np.asarray(gt_scene, dtype=np.int64).reshape(-1)
    pred_scene = np.asarray(pred_scene, dtype=np.int64).reshape(-1)
    if gt_scene.size == 0:
        raise ValueError('no images to evaluate')
    if pred_scene.shape != gt_scene.shape:
        raise ValueError(f'{pred_scene.size} predicted scenes for {gt_scene.size} images')
    pos_err = position_errors(pred_position, gt_position)
    rot_err = orientation_errors_deg(pred_orientation, gt_orientation)
    if pos_err.shape != gt_scene.shape:
        raise ValueError(f'{pos_err.size} poses for {gt_scene.size} scene labels')
    thresholds = [(float(m), float(d)) for m, d in thresholds]
    labels = [threshold_label(m, d) for m, d in thresholds]
    base_pos_err = base_rot_err = None
    if baseline is not None:
        base_position, base_orientation = baseline.predict(scene_names, gt_scene)
        base_pos_err = position_errors(base_position, gt_position)
        base_rot_err = orientation_errors_deg(base_orientation, gt_orientation)
    scenes = []
    for index, name in enumerate(scene_names):
        mask = gt_scene == index
        if not mask.any():
            continue
        scene = SceneMetrics(
            scene=name, images=int(mask.sum()),
            median_position_m=float(np.median(pos_err[mask])),
            median_orientation_deg=float(np.median(rot_err[mask])),
            mean_position_m=float(pos_err[mask].mean()),
            mean_orientation_deg=float(rot_err[mask].mean()),
            scene_accuracy=float(np.mean(pred_scene[mask] == index)),
            recall=dict(zip(labels, recall(pos_err[mask], rot_err[mask], thresholds))))
        if baseline is not None:
            scene.baseline_median_position_m = float(np.median(base_pos_err[mask]))
            scene.baseline_median_orientation_deg = float(np.median(base_rot_err[mask]))
        scenes.append(scene)
    report = MetricsReport(
        scenes=scenes,
        average_median_position_m=float(np.mean([s.median_position_m for s in scenes])),
        average_median_orientation_deg=float(np.mean([s.median_orientation_deg
                                                      for s in scenes])),
        scene_accuracy=float(np.mean(pred_scene == gt_scene)),
        recall=dict(zip(labels, recall(pos_err, rot_err, thresholds))),
        thresholds=thresholds,
        timing=TimingStats.from_seconds(times_s) if times_s is not None else None)
    if baseline is not None:
        report.baseline_average_median_position_m = float(
            np.mean([s.baseline_median_position_m for s in scenes]))
        report.baseline_average_median_orientation_deg = float(
            np.mean([s.baseline_median_orientation_deg for s in scenes]))
    return report


# ---------------------------------------------------------------------------------------------
# How honest a covariance is
# ---------------------------------------------------------------------------------------------

#: Sigma levels of the coverage table and the share of a 3-D Gaussian inside each ellipsoid
#: (chi-square with 3 degrees of freedom at 1, 4 and 9).
SIGMA_LEVELS = (1, 2, 3)
NOMINAL_COVERAGE_3D = {1: 0.1987, 2: 0.7385, 3: 0.9707}


@dataclass
class BlockCoverage:
    """Coverage of one 3-D block (position or rotation) of the covariance.

    Attributes:
        inside: sigma level -> fraction of errors ``e`` with ``e^T S^-1 e <= level^2``.
        mean_nees: mean normalised estimation error squared ``e^T S^-1 e`` (3 for an honest
            3-D covariance; larger: the covariance is overconfident).
        images: errors counted.
    """

    inside: dict[int, float]
    mean_nees: float
    images: int


@dataclass
class CovarianceCoverage:
    """How often the errors fall inside the published covariance's ellipsoids.

    Attributes:
        position, rotation: coverage of the two 3x3 blocks; the rotation error is
            ``rotvec(R_gt R_est^T)`` (radians about the scene's fixed axes), the parametrisation
            the covariance is calibrated and published in.
        per_scene: scene -> ``{'position': BlockCoverage, 'rotation': BlockCoverage}``.
    """

    position: BlockCoverage
    rotation: BlockCoverage
    per_scene: dict[str, dict[str, BlockCoverage]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict (with the nominal fractions)."""
        return {**asdict(self), 'nominal': {str(k): v for k, v in NOMINAL_COVERAGE_3D.items()}}

    def to_markdown(self) -> str:
        """Return a table: per scene and overall, the share inside 1, 2, 3 sigma and NEES."""
        lines = ['| scene | block | inside 1σ | inside 2σ | inside 3σ | mean NEES |',
                 '|---|---|---|---|---|---|']
        rows = [(name, blocks) for name, blocks in self.per_scene.items()]
        rows.append(('all', {'position': self.position, 'rotation': self.rotation}))
        for name, blocks in rows:
            for block in ('position', 'rotation'):
                value = blocks[block]
                lines.append(f'| {name} | {block} | '
                             + ' | '.join(f'{100 * value.inside[k]:.1f} %' for k in SIGMA_LEVELS)
                             + f' | {value.mean_nees:.2f} |')
        nominal = ' / '.join(f'{100 * NOMINAL_COVERAGE_3D[k]:.1f}' for k in SIGMA_LEVELS)
        lines.append('')
        lines.append(f'Nominal for a 3-D Gaussian: {nominal} % inside 1/2/3σ, mean NEES 3.')
        return '\n'.join(lines) + '\n'


def pose_error_vectors(gt_position: np.ndarray, gt_orientation: np.ndarray,
                       pred_position: np.ndarray, pred_orientation: np.ndarray) -> np.ndarray:
    """Return ``N x 6`` errors ``[p_gt - p_est, rotvec(R_gt R_est^T)]`` (m, rad).

    The rotation error is the small rotation about the scene frame's fixed axes that takes the
    estimate to the truth (``R_gt = exp(e) R_est``), the order and frame of the published
    covariance. Quaternions are xyzw; the estimate may be unnormalised (scipy normalises).
    """
    rotation_error = (Rotation.from_quat(gt_orientation)
                      * Rotation.from_quat(pred_orientation).inv()).as_rotvec()
    return np.concatenate([np.asarray(gt_position) - np.asarray(pred_position),
                           rotation_error], axis=1)


def _block_coverage(errors: np.ndarray, covariances: np.ndarray) -> BlockCoverage:
    """Return the coverage of 3-D ``errors`` (N, 3) under ``covariances`` (N, 3, 3)."""
    nees = np.einsum('ni,ni->n', errors, np.linalg.solve(covariances, errors[..., None])[..., 0])
    return BlockCoverage({k: float(np.mean(nees <= k * k)) for k in SIGMA_LEVELS},
                         float(np.mean(nees)), int(nees.size))


def covariance_coverage(errors: Any, covariances: Any, scene: Any,
                        scene_names: Sequence[str]) -> CovarianceCoverage:
    """Return the coverage of pose errors under the covariances published with them.

    Args:
        errors: (N, 6) ``[p_gt - p_est, rotvec(R_gt R_est^T)]`` (m, rad).
        covariances: (N, 6, 6) covariance published with each estimate (x y z rx ry rz).
        scene: (N,) ground-truth scene index of each image (for the per-scene rows).
        scene_names: names in index order.
    """
    errors = np.asarray(errors, dtype=np.float64)
    covariances = np.asarray(covariances, dtype=np.float64)
    scene = np.asarray(scene).reshape(-1)
    if errors.ndim != 2 or errors.shape[1] != 6 or covariances.shape != (len(errors), 6, 6) \
            or scene.shape != (len(errors),) or len(errors) == 0:
        raise ValueError(f'need N x 6 errors, N x 6 x 6 covariances and N scenes with N > 0, '
                         f'got {errors.shape}, {covariances.shape}, {scene.shape}')

    def blocks(mask: np.ndarray) -> dict[str, BlockCoverage]:
        return {'position': _block_coverage(errors[mask, :3], covariances[mask, :3, :3]),
                'rotation': _block_coverage(errors[mask, 3:], covariances[mask, 3:, 3:])}

    everything = blocks(np.ones(len(errors), dtype=bool))
    per_scene = {name: blocks(scene == index) for index, name in enumerate(scene_names)
                 if np.any(scene == index)}
    return CovarianceCoverage(everything['position'], everything['rotation'], per_scene)
