"""Per-frame vs fused against ground truth: the figures both bag evaluators report.

Offline, the two estimates come from the node's pose stream replayed on the bag
(``mspr_training.bags.fusion_replay``); live, from the node itself (``~/pose_raw`` and
``~/pose``, with ``~/pose_update`` beside them: ``mspr_training.bags.live``). Both are compared
on the same frames, in the ground truth's frame: median and p95 errors, frame-to-frame jitter,
and the 2-sigma coverage of the position and of the rotation under the published covariance's
3x3 blocks, against the nominal 73.9 % of a 3-D Gaussian. The report also says which error
correlation model each scene's fusion used (``fusion.error_correlation``): the one the bundle
learned, or the fallback.
"""
from dataclasses import dataclass, fields
import math
from typing import Any, Mapping

import numpy as np
from scipy.spatial.transform import Rotation

from mspr_ros.estimation.error_correlation import ErrorCorrelation
from mspr_ros.geometry.covariance import covariance_at_offset
from mspr_ros.geometry.transforms import Transform
from mspr_training.metrics import (_block_coverage, NOMINAL_COVERAGE_3D, orientation_errors_deg,
                                   pose_error_vectors, position_errors)

#: Where the compared estimates come from (the block's ``source``).
REPLAYED = 'replay'
LIVE = 'node'
#: A pause between frames longer than this many median frame intervals splits the stream
#: (:func:`continuous_pairs`), and never one shorter than ``MIN_GAP_S``.
GAP_INTERVALS = 5.0
MIN_GAP_S = 0.5


@dataclass(frozen=True, eq=False)
class PoseSeries:
    """Poses of the compared frame: (N, 3) positions, (N, 4) xyzw, (N, 6, 6) covariances."""

    positions: np.ndarray
    orientations: np.ndarray
    covariances: np.ndarray

    @classmethod
    def of(cls, items) -> 'PoseSeries':
        """Return the series of ``(Transform, covariance)`` pairs."""
        items = list(items)
        return cls(np.array([p.translation for p, _ in items]).reshape(-1, 3),
                   np.array([p.rotation for p, _ in items]).reshape(-1, 4),
                   np.array([c for _, c in items]).reshape(-1, 6, 6))


def in_compared_frame(T_map_base: Transform, covariance, T_base_child: Transform
                      ) -> tuple[Transform, np.ndarray]:
    """Return (pose, covariance) of the compared frame rigidly attached to the base."""
    pose = (T_map_base @ T_base_child).canonical()
    return pose, covariance_at_offset(covariance, pose.translation - T_map_base.translation)


def continuous_pairs(stamps_ns) -> np.ndarray:
    """Return, for each pair of consecutive frames, whether the stream ran on between them.

    A pause longer than ``GAP_INTERVALS`` median frame intervals (and than ``MIN_GAP_S``) splits
    the stream: the recording stopped, or another walk begins (``mspr-synth`` leaves 1 s between
    walks, whose poses jump from one place or scene to another). What an estimate does across
    such a pause is a relocalization, not jitter.
    """
    steps = np.diff(np.asarray(stamps_ns, dtype=np.int64)) / 1e9
    if not steps.size:
        return np.zeros(0, dtype=bool)
    return steps <= max(MIN_GAP_S, GAP_INTERVALS * float(np.median(steps)))


def jitter_rms(positions, orientations, gt_positions, gt_orientations,
               continuous=None) -> tuple[float, float]:
    """Return the RMS frame-to-frame jitter (m, deg) of estimates against the truth.

    Over consecutive frames k, k+1: position ``||(p_est[k+1] - p_est[k]) - (p_gt[k+1] -
    p_gt[k])||``; orientation the angle of ``E[k+1] E[k]^-1`` with ``E = R_est R_gt^-1`` (the
    estimated change of rotation with the true change undone). A constant offset has none.
    ``continuous`` (one bool per pair, :func:`continuous_pairs`) leaves out the pairs across a
    pause; None counts every pair. NaN without a pair.
    """
    pairs = np.ones(max(len(positions) - 1, 0), dtype=bool) if continuous is None else \
        np.asarray(continuous, dtype=bool)
    if len(positions) < 2 or not pairs.any():
        return math.nan, math.nan
    moved = np.diff(np.asarray(positions, float), axis=0) - np.diff(
        np.asarray(gt_positions, float), axis=0)
    error = (Rotation.from_quat(orientations)
             * Rotation.from_quat(gt_orientations).inv()).as_quat()
    turned = orientation_errors_deg(error[1:], error[:-1])
    return (float(np.sqrt(np.mean(np.sum(moved[pairs] ** 2, axis=1)))),
            float(np.sqrt(np.mean(turned[pairs] ** 2))))


def coverage_2sigma(positions, orientations, gt_positions, gt_orientations,
                    covariances) -> dict[str, float]:
    """Return the shares of frames inside the 2-sigma ellipsoid of each 3x3 block.

    ``position``: ``e^T S^-1 e <= 2^2`` with ``e = p_gt - p_est`` and S the position block;
    ``rotation``: the same with ``e = rotvec(R_gt R_est^T)`` (radians about the map axes, the
    covariance's convention) and the rotation block. NaN for no frame.
    """
    if len(positions) == 0:
        return {'position': math.nan, 'rotation': math.nan}
    errors = pose_error_vectors(np.asarray(gt_positions, float).reshape(-1, 3),
                                np.asarray(gt_orientations, float).reshape(-1, 4),
                                np.asarray(positions, float).reshape(-1, 3),
                                np.asarray(orientations, float).reshape(-1, 4))
    covariances = np.asarray(covariances, float).reshape(-1, 6, 6)
    return {'position': _block_coverage(errors[:, :3], covariances[:, :3, :3]).inside[2],
            'rotation': _block_coverage(errors[:, 3:], covariances[:, 3:, 3:]).inside[2]}


def series_row(series: PoseSeries, gt_positions, gt_orientations,
               stamps_ns=None) -> dict[str, Any]:
    """Return the comparison row of one estimate: errors, jitter and 2-sigma coverages.

    ``stamps_ns``: the frames' stamps; the jitter then leaves out pairs across a pause
    (:func:`continuous_pairs`), and the row says how many pairs it counted.
    """
    position = position_errors(series.positions, gt_positions)
    orientation = orientation_errors_deg(series.orientations, gt_orientations)
    continuous = None if stamps_ns is None else continuous_pairs(stamps_ns)
    jitter = jitter_rms(series.positions, series.orientations, gt_positions, gt_orientations,
                        continuous)
    coverage = coverage_2sigma(series.positions, series.orientations, gt_positions,
                               gt_orientations, series.covariances)
    nominal = NOMINAL_COVERAGE_3D[2]
    return {'frames': int(position.size),
            'position_m': _median_p95(position),
            'orientation_deg': _median_p95(orientation),
            'jitter': {'position_m': jitter[0], 'orientation_deg': jitter[1],
                       'pairs': int(max(position.size - 1, 0) if continuous is None
                                    else np.count_nonzero(continuous)),
                       'pairs_across_pauses': 0 if continuous is None
                       else int(continuous.size - np.count_nonzero(continuous))},
            'coverage_2sigma': coverage,
            'coverage_minus_nominal_points': {key: 100 * (value - nominal)
                                              for key, value in coverage.items()}}


def _median_p95(values: np.ndarray) -> dict[str, float]:
    if values.size == 0:
        return {'median': math.nan, 'p95': math.nan}
    return {'median': float(np.median(values)), 'p95': float(np.percentile(values, 95))}


def _ratio(fused: float, per_frame: float) -> float:
    return fused / per_frame if per_frame > 0 else math.nan


def config_dict(config) -> dict[str, Any]:
    """Return a ``FusionConfig`` as JSON-ready data (correlation models by ``to_dict``)."""
    def plain(value):
        if isinstance(value, ErrorCorrelation):
            return value.to_dict()
        if isinstance(value, Mapping):
            return {str(key): plain(item) for key, item in value.items()}
        return value
    return {field.name: plain(getattr(config, field.name)) for field in fields(config)}


def correlation_summary(mode: str, time_s: float, models: Mapping[str, ErrorCorrelation],
                        fallback: list[str]) -> dict[str, Any]:
    """Return which correlation model each scene's fusion used, and why.

    Args:
        mode: the node's ``fusion.error_correlation`` ('bundle', 'time', 'independent').
        time_s: its ``fusion.error_correlation_s`` (used by 'time' only).
        models: scene -> model (``resolve_error_correlation``).
        fallback: the scenes without a learned model in 'bundle' mode (one frame's worth).
    """
    return {'mode': mode, 'time_s': time_s if mode == 'time' else None,
            'scenes': {scene: {**model.to_dict(), 'fallback': scene in fallback}
                       for scene, model in sorted(models.items())},
            'fallback_scenes': sorted(fallback)}


def fusion_comparison(gt_positions, gt_orientations, per_frame: PoseSeries, fused: PoseSeries,
                      *, source: str, compared_frame: str, config, correlation: dict,
                      rejected: Mapping[str, int], stamps_ns=None) -> dict[str, Any]:
    """Return the report's per-frame vs fused block: both rows and fused/per-frame ratios.

    ``source``: ``REPLAYED`` (the node's stream replayed offline) or ``LIVE`` (the node's own
    outputs); ``rejected``: reason -> frames the node did not publish; ``stamps_ns``: the
    frames' stamps (the jitter of both rows then counts no pair across a pause).
    """
    gt_p = np.asarray(gt_positions, float).reshape(-1, 3)
    gt_q = np.asarray(gt_orientations, float).reshape(-1, 4)
    first = series_row(per_frame, gt_p, gt_q, stamps_ns)
    second = series_row(fused, gt_p, gt_q, stamps_ns)
    return {'source': source, 'compared_frame': compared_frame, 'config': config_dict(config),
            'error_correlation': correlation,
            'per_frame': first, 'fused': second,
            'rejected_by_node': {reason: int(count)
                                 for reason, count in sorted(rejected.items())},
            'nominal_coverage_2sigma_3d': NOMINAL_COVERAGE_3D[2],
            'ratios_fused_over_per_frame': {
                'p95_position': _ratio(second['position_m']['p95'], first['position_m']['p95']),
                'p95_orientation': _ratio(second['orientation_deg']['p95'],
                                          first['orientation_deg']['p95']),
                **{f'jitter_{key}': _ratio(second['jitter'][key], first['jitter'][key])
                   for key in ('position_m', 'orientation_deg')}}}


def _on_stamps(stamps, truth, poses) -> PoseSeries:
    """Return the compared frame's series of ``poses`` (stamp -> base pose, covariance)."""
    return PoseSeries.of(in_compared_frame(*poses[stamp], truth[stamp][2]) for stamp in stamps)


def node_comparison(truth: Mapping[int, tuple], per_frame: Mapping[int, tuple],
                    fused: Mapping[int, tuple], updates: tuple | None, *, compared_frame: str,
                    config, correlation: dict, rejected: Mapping[str, int]
                    ) -> dict[str, Any] | None:
    """Return the per-frame vs fused block of the node's own outputs (None: no common frame).

    Args:
        truth: stamp -> (gt position, gt xyzw, ``T_base_child`` of the compared frame).
        per_frame, fused: stamp -> (``T_map_base``, 6x6 covariance) of ``~/pose_raw`` and
            ``~/pose``.
        updates: None when the node has no ``~/pose_update``, else (stamp -> pose and
            covariance as above, number of messages).
        compared_frame, config, correlation, rejected: as ``fusion_comparison``.
    """
    stamps = sorted(set(truth) & set(per_frame) & set(fused))
    if not stamps:
        return None
    block = fusion_comparison(
        [truth[s][0] for s in stamps], [truth[s][1] for s in stamps],
        _on_stamps(stamps, truth, per_frame), _on_stamps(stamps, truth, fused), source=LIVE,
        compared_frame=compared_frame, config=config, correlation=correlation,
        rejected=rejected, stamps_ns=stamps)
    if updates is None:
        block['pose_update'] = {'available': False}
        return block
    poses, messages = updates
    matched = sorted(set(truth) & set(poses))
    block['pose_update'] = {
        'available': True, 'messages': int(messages), 'per_frame_messages': len(per_frame),
        'row': series_row(_on_stamps(matched, truth, poses), [truth[s][0] for s in matched],
                          [truth[s][1] for s in matched], matched) if matched else None}
    return block


def _length(value, unit: str, scale: float = 1.0) -> str:
    return '∞' if value is None else f'{scale * value:.3g} {unit}'


def describe_model(model: Mapping[str, Any]) -> str:
    """Return one correlation model (``ErrorCorrelation.to_dict``) in words."""
    if model.get('rotation'):
        rest = {key: value for key, value in model.items() if key != 'rotation'}
        return (f'position {describe_model(rest)}; rotation '
                f'{describe_model(model["rotation"])}')
    source = model.get('source')
    if source == 'independent':
        return 'every frame independent'
    if source == 'one_frame':
        return "a window worth one frame's covariance"
    if source == 'time':
        return f'exp(-dt / {model["time_s"]:.3g} s)'
    return (f'{source}: length {_length(model["length_m"], "m")}, angle '
            f'{_length(model["angle_rad"], "deg", 180 / math.pi)}, time '
            f'{_length(model["time_s"], "s")}, floor {model["floor"]:.3g}')


def correlation_markdown(correlation: Mapping[str, Any]) -> list[str]:
    """Return the lines saying which correlation model each scene's fusion used."""
    mode, scenes = correlation['mode'], correlation['scenes']
    head = f'Error correlation of the fused frames (`fusion.error_correlation: {mode}`'
    head += f', {correlation["time_s"]:g} s)' if mode == 'time' else ')'
    if not scenes:
        return [head + ': no scene known; every frame fell to the fusion\'s default model.', '']
    lines = [head + ':', '']
    for scene, model in scenes.items():
        text = describe_model(model)
        if model.get('fallback'):
            text = f'no learned model in the bundle, fallback: {text}'
        elif mode == 'bundle':
            text = f'learned ({text})'
        lines.append(f'- {scene}: {text}')
    return lines + ['']


def _row_markdown(label: str, row: Mapping[str, Any]) -> str:
    position, orientation, jitter = row['position_m'], row['orientation_deg'], row['jitter']
    inside, minus = row['coverage_2sigma'], row['coverage_minus_nominal_points']
    coverage = ' | '.join(f'{100 * inside[key]:.1f} % ({minus[key]:+.1f})'
                          for key in ('position', 'rotation'))
    return (f'| {label} | {row["frames"]} | {position["median"]:.3f} / {position["p95"]:.3f} | '
            f'{orientation["median"]:.2f} / {orientation["p95"]:.2f} | '
            f'{jitter["position_m"]:.3f} / {jitter["orientation_deg"]:.2f} | {coverage} |')


def fusion_markdown(comparison: Mapping[str, Any]) -> list[str]:
    """Return the Markdown lines of a per-frame vs fused comparison."""
    frame = comparison['compared_frame']
    if comparison['source'] == LIVE:
        origin = (f'{frame} pose as the node published it: `~/pose_raw` (each frame\'s own) '
                  'and `~/pose` (fused), matched to the ground truth by stamp, on the same '
                  'frames.')
    else:
        origin = (f'{frame} pose as the node publishes it with `fusion: none` and with '
                  '`fusion: window`, its gates and fusion replayed on the bag, on the same '
                  'frames.')
    lines = ['## Per-frame vs fused', '', origin, '',
             '| estimate | frames | position median / p95 (m) | orientation median / p95 (deg) '
             '| jitter (m / deg RMS) | inside 2σ position (minus nominal, points) '
             '| inside 2σ rotation (minus nominal, points) |',
             '| --- | --- | --- | --- | --- | --- | --- |',
             _row_markdown('per-frame', comparison['per_frame']),
             _row_markdown('fused', comparison['fused'])]
    update = comparison.get('pose_update')
    if update and update.get('available') and update['row'] is not None:
        lines.append(_row_markdown('pose update (EKF input)', update['row']))
    lines.append('')
    if update is not None:
        lines += [pose_update_sentence(update), '']
    rejected = comparison.get('rejected_by_node') or {}
    if rejected:
        lines += ['Frames the node did not publish: ' + ', '.join(
            f'{count} {reason}' for reason, count in rejected.items()) + '.', '']
    ratios = comparison['ratios_fused_over_per_frame']
    lines += correlation_markdown(comparison['error_correlation'])
    return lines + [
        f'Fused / per-frame: p95 position {ratios["p95_position"]:.2f}, p95 orientation '
        f'{ratios["p95_orientation"]:.2f}, jitter {ratios["jitter_position_m"]:.2f} '
        f'(position), {ratios["jitter_orientation_deg"]:.2f} (orientation). Nominal 2σ coverage '
        f'of a 3-D Gaussian: {100 * comparison["nominal_coverage_2sigma_3d"]:.1f} %; the rotation '
        'error is rotvec(R_gt R_est^T) under the covariance\'s rotation block. Jitter is the RMS '
        'over consecutive compared frames of the estimated change minus the true change'
        + _pauses(comparison['per_frame']['jitter']) + '.', '']


def _pauses(jitter: Mapping[str, Any]) -> str:
    """Return how many frame pairs the jitter left out, as the end of a sentence."""
    skipped = jitter.get('pairs_across_pauses', 0)
    if not skipped:
        return ''
    return (f' ({jitter["pairs"]} pairs; {skipped} pairs across a pause in the recording, '
            'where another walk begins, are left out)')


def pose_update_sentence(update: Mapping[str, Any]) -> str:
    """Return what the ``~/pose_update`` block says, in one sentence."""
    if not update.get('available'):
        return '`~/pose_update`: absent, the node has no such topic.'
    matched = 0 if update['row'] is None else update['row']['frames']
    return (f'`~/pose_update` (per-frame poses sent only when the view changed enough, '
            f'covariance inflated: what the EKF gets): {update["messages"]} messages for '
            f'{update["per_frame_messages"]} `~/pose_raw`, {matched} with ground truth.')
