"""Per-frame vs fused on a bag: the node's pose stream replayed offline, then compared.

Every answered frame goes through ``mspr_ros.estimation.pose_stream.PoseStream``, the rule the
node publishes by: the frame chain, covariance, scene and jump gates and the initial-pose guard of
``FrameProcessor`` (configured from the node's parameters), then the ``map -> odom`` fusion with
the frame's scene (whose error correlation model decides how much a window of its frames is
worth), with ``odom -> base`` and ``base <- camera`` looked up in the bag's TF at the image
stamp. A frame the gate rejects publishes nothing and is counted; a relocalization restarts the
fusion window, as in the node. The per-frame and fused estimates of the published frames that
have ground truth are then compared on the same frames
(``mspr_training.bags.fusion_compare``).
"""
from dataclasses import dataclass, field
import logging
import math

from mspr_ros.estimation.error_correlation import ErrorCorrelation, mode_default
from mspr_ros.estimation.error_correlation import resolve_error_correlation
from mspr_ros.estimation.frame_processor import (CovarianceSettings, FrameProcessor,
                                                 NON_FINITE, NonFiniteEstimate,
                                                 ProcessorSettings)
from mspr_ros.estimation.fusion import FusionConfig
from mspr_ros.estimation.gating import GateConfig
from mspr_ros.estimation.pose_stream import PoseStream
from mspr_ros.geometry.transforms import base_in_map, Transform
from mspr_training.bags.fusion_compare import (correlation_summary, fusion_comparison,
                                               in_compared_frame, PoseSeries, REPLAYED)
from mspr_training.bags.report import FrameStatus

LOGGER = logging.getLogger(__name__)


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


def _correlation_parameters(parameters: dict) -> tuple[str, float]:
    """Return the node's ``fusion.error_correlation`` mode and ``fusion.error_correlation_s``."""
    return (str(parameters.get('fusion.error_correlation', 'bundle')),
            float(parameters.get('fusion.error_correlation_s', 0.0)))


def error_correlation(parameters: dict, bundle) -> tuple[dict[str, ErrorCorrelation],
                                                         list[str]]:
    """Return each scene's error correlation model and the scenes that fell back.

    The node's rule (``resolve_error_correlation``): 'bundle' takes the models ``mspr-export``
    learned (``Bundle.error_correlation``; empty for older bundles), a scene without one gets
    one frame's worth; 'time' and 'independent' ignore the bundle.

    Raises:
        ValueError: an unknown mode, or 'time' without a positive ``fusion.error_correlation_s``.
    """
    mode, time_s = _correlation_parameters(parameters)
    learned = dict(getattr(bundle, 'error_correlation', None) or {})
    scenes = list(getattr(bundle, 'scene_names', None) or ())
    return resolve_error_correlation(mode, time_s, learned, scenes)


def correlation_report(parameters: dict, bundle) -> dict:
    """Return the report's statement of the correlation model each scene's fusion uses."""
    mode, time_s = _correlation_parameters(parameters)
    models, fallback = error_correlation(parameters, bundle)
    return correlation_summary(mode, time_s, models, fallback)


def fusion_config(parameters: dict, bundle=None) -> FusionConfig | None:
    """Return the fusion the node runs with these parameters (None with ``fusion: none``).

    The same fields as the shell's ``mspr_ros.ros.params.fusion_config`` (which tools may not
    import); a parameter not given keeps ``FusionConfig``'s default, as the node's. ``bundle``
    (a ``Bundle``, or None for no scene) gives the learned error correlation models of the
    'bundle' mode (``error_correlation``).

    Raises:
        ValueError: an unknown ``fusion`` or ``fusion.error_correlation`` value.
    """
    mode = parameters.get('fusion', 'window')
    if mode == 'none':
        return None
    if mode != 'window':
        raise ValueError(f"fusion must be 'window' or 'none', got {mode!r}")
    default = FusionConfig()
    models, _ = error_correlation(parameters, bundle)
    return FusionConfig(
        window_s=float(parameters.get('fusion.window_s', default.window_s)),
        window_distance_m=float(parameters.get('fusion.window_distance_m',
                                               default.window_distance_m)),
        odometry_drift_per_m=float(parameters.get('fusion.odometry_drift_per_m',
                                                  default.odometry_drift_per_m)),
        odometry_rotation_drift_per_m=float(parameters.get(
            'fusion.odometry_rotation_drift_per_m', default.odometry_rotation_drift_per_m)),
        two_d=bool(parameters.get('two_d_mode', default.two_d)),
        error_correlation=models,
        default_correlation=mode_default(*_correlation_parameters(parameters)))


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
        per_frame.append(in_compared_frame(output.estimate.T_map_base,
                                           output.estimate.covariance, T_base_child))
        fused.append(in_compared_frame(output.T_map_base, output.covariance, T_base_child))
    if missing and len(missing) == len(answered):
        raise LookupError(f'no {odom} -> {base} odometry or camera extrinsic for any frame '
                          f'({missing[0]})')
    if missing:
        LOGGER.warning('fusion replay: %d frames without a transform (%s)', len(missing),
                       missing[0])
    return Replay(kept, PoseSeries.of(per_frame), PoseSeries.of(fused), rejected)


def fused_block(records, gt, transforms, localizer, alignments, parameters,
                compared_frame) -> tuple[dict | None, list[str]]:
    """Return (the per-frame vs fused block or None, notes saying why it is absent)."""
    bundle = localizer.bundle
    config = fusion_config(parameters, bundle)
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
    gt_p = [records[i].gt_position for i in replay.frames]
    gt_q = [records[i].gt_orientation for i in replay.frames]
    return fusion_comparison(
        gt_p, gt_q, replay.per_frame, replay.fused, source=REPLAYED,
        compared_frame=compared_frame, config=config,
        correlation=correlation_report(parameters, bundle), rejected=replay.rejected,
        stamps_ns=[records[i].stamp_ns for i in replay.frames]), []
