"""Per-frame vs fused on a bag: the node's pose stream replayed offline, then compared.

Every answered frame goes through ``mspr_ros.estimation.pose_stream.PoseStream``, the rule the
node publishes by: the frame chain, covariance, scene and jump gates and the initial-pose guard of
``FrameProcessor`` (configured from the node's parameters), then the ``map -> odom`` fusion, with
``odom -> base`` and ``base <- camera`` looked up in the bag's TF at the image stamp. A frame the
gate rejects publishes nothing and is counted; a relocalization restarts the fusion window, as in
the node. The per-frame and fused estimates of the published frames that have ground truth are
then compared on the same frames: median and p95 errors, jitter, 2 sigma coverage.
"""
from dataclasses import asdict, dataclass, field
import logging
import math

import numpy as np
from scipy.spatial.transform import Rotation

from mspr_ros.estimation.frame_processor import (CovarianceSettings, FrameProcessor,
                                                 NON_FINITE, NonFiniteEstimate,
                                                 ProcessorSettings)
from mspr_ros.estimation.fusion import FusionConfig
from mspr_ros.estimation.gating import GateConfig
from mspr_ros.estimation.pose_stream import PoseStream
from mspr_ros.geometry.covariance import covariance_at_offset
from mspr_ros.geometry.transforms import base_in_map, Transform
from mspr_training.bags.report import FrameStatus
from mspr_training.metrics import (_block_coverage, NOMINAL_COVERAGE_3D, orientation_errors_deg,
                                   position_errors)

LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class PoseSeries:
    """Poses of the compared frame: (N, 3) positions, (N, 4) xyzw, (N, 6, 6) covariances."""

    positions: np.ndarray
    orientations: np.ndarray
    covariances: np.ndarray


@dataclass(frozen=True, eq=False)
class Replay:
    """The replayed stream on the frames that have ground truth.

    Attributes:
        frames: indices into the records of the published, matched frames.
        per_frame, fused: the compared frame's estimates on those frames.
        rejected: reason -> frames the node would not have published (gate, bad output).
    """

    frames: list[int]
    per_frame: PoseSeries
    fused: PoseSeries
    rejected: dict[str, int] = field(default_factory=dict)


def fusion_config(parameters: dict) -> FusionConfig | None:
    """Return the fusion the node runs with these parameters (None with ``fusion: none``).

    The same fields as the shell's ``mspr_ros.ros.params.fusion_config`` (which tools may not
    import); a parameter not given keeps ``FusionConfig``'s default, as the node's.
    """
    mode = parameters.get('fusion', 'window')
    if mode == 'none':
        return None
    if mode != 'window':
        raise ValueError(f"fusion must be 'window' or 'none', got {mode!r}")
    default = FusionConfig()
    return FusionConfig(
        window_s=float(parameters.get('fusion.window_s', default.window_s)),
        window_distance_m=float(parameters.get('fusion.window_distance_m',
                                               default.window_distance_m)),
        odometry_drift_per_m=float(parameters.get('fusion.odometry_drift_per_m',
                                                  default.odometry_drift_per_m)),
        error_correlation_s=float(parameters.get('fusion.error_correlation_s',
                                                 default.error_correlation_s)),
        two_d=bool(parameters.get('two_d_mode', default.two_d)))


def covariance_settings(parameters: dict) -> CovarianceSettings:
    """Return the node's ``covariance.*`` settings (defaults where a parameter is not given)."""
    default = CovarianceSettings()
    return CovarianceSettings(
        mode=str(parameters.get('covariance.mode', default.mode)),
        position_stddev=float(parameters.get('covariance.position_stddev',
                                             default.position_stddev)),
        orientation_stddev=float(parameters.get('covariance.orientation_stddev',
                                                default.orientation_stddev)),
        confidence_inflation=float(parameters.get('covariance.confidence_inflation',
                                                  default.confidence_inflation)))


def processor_settings(parameters: dict) -> ProcessorSettings:
    """Return the node's per-frame settings: gates, covariance, two_d_mode, initial pose.

    As the shell's ``mspr_ros.ros.params.processor_settings``: a jump limit of 0 (the node's
    default) means unlimited; a parameter not given keeps the core's default.
    """
    default_gate = GateConfig()

    def limit(name: str) -> float:
        value = float(parameters.get(name, 0.0))
        return value if value > 0.0 else math.inf

    gate = GateConfig(
        min_scene_confidence=float(parameters.get('min_scene_confidence',
                                                  default_gate.min_scene_confidence)),
        max_jump_translation=limit('max_jump_translation'),
        max_jump_rotation_deg=limit('max_jump_rotation'),
        allowed_scenes=frozenset(parameters.get('allowed_scenes') or ()))
    default = ProcessorSettings(gate)
    return ProcessorSettings(
        gate=gate, covariance=covariance_settings(parameters),
        two_d_mode=bool(parameters.get('two_d_mode', default.two_d_mode)),
        initial_pose_gate=float(parameters.get('initial_pose_gate', default.initial_pose_gate)),
        agreement_frames=int(parameters.get('relocalization_agreement_frames',
                                            default.agreement_frames)))


def _in_compared_frame(T_map_base, covariance, T_base_child):
    """Return (pose, covariance) of the compared frame rigidly attached to the base."""
    pose = (T_map_base @ T_base_child).canonical()
    return pose, covariance_at_offset(covariance, pose.translation - T_map_base.translation)


def _series(items) -> PoseSeries:
    return PoseSeries(np.array([p.translation for p, _ in items]).reshape(-1, 3),
                      np.array([p.rotation for p, _ in items]).reshape(-1, 4),
                      np.array([c for _, c in items]).reshape(-1, 6, 6))


def replay_fusion(records, transforms, localizer, alignments, parameters,
                  config: FusionConfig) -> Replay:
    """Replay the node's pose stream over the answered frames (see the module docstring).

    Frames lacking a transform are skipped (and logged), as the node gives them no output.

    Raises:
        LookupError: no answered frame has the ``odom -> base`` and ``base <- camera``
            transforms.
        ValueError: the node's covariance cannot be computed (e.g. no calibration).
    """
    odom, base = str(parameters['odom_frame_id']), str(parameters['base_frame_id'])
    calibrations = dict(getattr(localizer.bundle, 'covariance', None) or {})
    stream = PoseStream(FrameProcessor(alignments, calibrations, processor_settings(parameters)),
                        config)
    kept, per_frame, fused, missing, rejected = [], [], [], [], {}
    answered = [(i, r) for i, r in enumerate(records) if r.status == FrameStatus.ANSWERED]
    for index, record in answered:
        try:
            T_odom_base = transforms.lookup(odom, base, record.stamp_ns)
            T_base_cam = transforms.lookup(base, record.frame_id, record.stamp_ns)
        except LookupError as error:
            missing.append(str(error))
            continue
        try:
            output = stream.step(record.scene, record.scene_confidence, record.scene_position,
                                 record.scene_orientation, T_base_cam, T_odom_base,
                                 record.stamp_ns)
        except NonFiniteEstimate:
            rejected[NON_FINITE] = rejected.get(NON_FINITE, 0) + 1
            continue
        if not output.published:
            reason = output.estimate.decision.reason
            rejected[reason] = rejected.get(reason, 0) + 1
            continue
        if not record.matched:
            continue
        # The compared frame (camera or base) as the per-frame estimate places it on the base.
        T_map_base = base_in_map(output.estimate.T_map_cam, T_base_cam)
        T_base_child = T_map_base.inverse() @ Transform(record.position, record.orientation)
        kept.append(index)
        per_frame.append(_in_compared_frame(output.estimate.T_map_base,
                                            output.estimate.covariance, T_base_child))
        fused.append(_in_compared_frame(output.T_map_base, output.covariance, T_base_child))
    if missing and len(missing) == len(answered):
        raise LookupError(f'no {odom} -> {base} odometry or camera extrinsic for any frame '
                          f'({missing[0]})')
    if missing:
        LOGGER.warning('fusion replay: %d frames without a transform (%s)', len(missing),
                       missing[0])
    return Replay(kept, _series(per_frame), _series(fused), rejected)


def jitter_rms(positions, orientations, gt_positions, gt_orientations) -> tuple[float, float]:
    """Return the RMS frame-to-frame jitter (m, deg) of estimates against the truth.

    Over consecutive frames k, k+1: position ``||(p_est[k+1] - p_est[k]) - (p_gt[k+1] -
    p_gt[k])||``; orientation the angle of ``E[k+1] E[k]^-1`` with ``E = R_est R_gt^-1`` (the
    estimated change of rotation with the true change undone). A constant offset has none.
    NaN for fewer than two frames.
    """
    if len(positions) < 2:
        return math.nan, math.nan
    moved = np.diff(np.asarray(positions, float), axis=0) - np.diff(
        np.asarray(gt_positions, float), axis=0)
    error = (Rotation.from_quat(orientations)
             * Rotation.from_quat(gt_orientations).inv()).as_quat()
    turned = orientation_errors_deg(error[1:], error[:-1])
    return (float(np.sqrt(np.mean(np.sum(moved ** 2, axis=1)))),
            float(np.sqrt(np.mean(turned ** 2))))


def position_coverage_2sigma(positions, gt_positions, covariances) -> float:
    """Return the share of frames with ``e^T S^-1 e <= 2^2``: ``e = p_gt - p_est``, S 3x3 block."""
    errors = np.asarray(gt_positions, float) - np.asarray(positions, float)
    return _block_coverage(errors, np.asarray(covariances, float)[:, :3, :3]).inside[2]


def series_row(series: PoseSeries, gt_positions, gt_orientations) -> dict:
    """Return the comparison row of one estimate: errors, jitter and 2-sigma coverage."""
    position = position_errors(series.positions, gt_positions)
    orientation = orientation_errors_deg(series.orientations, gt_orientations)
    jitter = jitter_rms(series.positions, series.orientations, gt_positions, gt_orientations)
    coverage = position_coverage_2sigma(series.positions, gt_positions, series.covariances)
    return {'frames': int(position.size),
            'position_m': {'median': float(np.median(position)),
                           'p95': float(np.percentile(position, 95))},
            'orientation_deg': {'median': float(np.median(orientation)),
                                'p95': float(np.percentile(orientation, 95))},
            'jitter': {'position_m': jitter[0], 'orientation_deg': jitter[1]},
            'coverage_2sigma_position': coverage,
            'coverage_minus_nominal_points': 100 * (coverage - NOMINAL_COVERAGE_3D[2])}


def _ratio(fused: float, per_frame: float) -> float:
    return fused / per_frame if per_frame > 0 else math.nan


def fusion_comparison(records, replay: Replay, config: FusionConfig,
                      compared_frame: str) -> dict:
    """Return the report's per-frame vs fused block: both rows and fused/per-frame ratios."""
    gt_p = np.array([records[i].gt_position for i in replay.frames]).reshape(-1, 3)
    gt_q = np.array([records[i].gt_orientation for i in replay.frames]).reshape(-1, 4)
    first = series_row(replay.per_frame, gt_p, gt_q)
    second = series_row(replay.fused, gt_p, gt_q)
    return {'compared_frame': compared_frame, 'config': asdict(config),
            'per_frame': first, 'fused': second,
            'rejected_by_node': dict(sorted(replay.rejected.items())),
            'nominal_coverage_2sigma_3d': NOMINAL_COVERAGE_3D[2],
            'ratios_fused_over_per_frame': {
                'p95_position': _ratio(second['position_m']['p95'], first['position_m']['p95']),
                **{f'jitter_{key}': _ratio(second['jitter'][key], first['jitter'][key])
                   for key in ('position_m', 'orientation_deg')}}}


def fused_block(records, gt, transforms, localizer, alignments, parameters,
                compared_frame) -> tuple[dict | None, list[str]]:
    """Return (the per-frame vs fused block or None, notes saying why it is absent)."""
    config = fusion_config(parameters)
    if gt.trajectory is None:
        return None, []
    if config is None:
        return None, ['per-frame vs fused: absent, the node parameters say fusion: none']
    try:
        replay = replay_fusion(records, transforms, localizer, alignments, parameters, config)
    except (LookupError, ValueError) as error:
        return None, [f'per-frame vs fused: absent, the node fusion could not be replayed: '
                      f'{error}']
    if not replay.frames:
        return None, ['per-frame vs fused: absent, no published frame has ground truth and '
                      'odometry']
    return fusion_comparison(records, replay, config, compared_frame), []
