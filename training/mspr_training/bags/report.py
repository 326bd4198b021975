"""Results of a rosbag evaluation (offline or live) and their summary.

``BagEvaluation`` holds one ``FrameRecord`` per image of the bag: whether it was answered, dropped
or undecodable, the estimate, the matched ground truth and the latency. ``build_report`` turns it
into a ``BagReport``: frame accounting, latency median/p95, the accuracy metrics computed by
``mspr_training.metrics`` (the module ``mspr-evaluate`` uses too, so numbers are comparable) and
the absolute pose error statistics ``evo_ape`` reports (RMSE, mean, median, ...), so that our
numbers can be checked against evo's on the exported trajectories. The files (JSON, Markdown,
plots, TUM trajectories, an estimates bag) are written by ``mspr_training.bags.report_files``.
Both carry the per-frame vs fused comparison when the node fuses
(``mspr_training.bags.fusion_compare``: offline from the node's stream replayed, live from the
node's own ``~/pose_raw`` and ``~/pose``), rendered by ``fusion_compare.fusion_markdown``.
"""
from dataclasses import asdict, dataclass, field, replace
import enum
import math
from pathlib import Path
from typing import Any

import numpy as np

from mspr_training.bags.fusion_compare import fusion_markdown
from mspr_training.metrics import (compute_metrics, DEFAULT_RECALL_THRESHOLDS, MetricsReport,
                                   orientation_errors_deg, position_errors, TimingStats)
from mspr_training.plain_json import jsonable

#: Group label of the metrics when the bag announces no scene.
ALL_SCENES = '(all frames)'


class FrameStatus(str, enum.Enum):
    """What became of one image of the bag."""

    ANSWERED = 'answered'
    DROPPED = 'dropped'
    BAD_IMAGE = 'bad_image'


@dataclass(frozen=True, eq=False)
class FrameRecord:
    """One image of the bag and everything measured about it.

    Attributes:
        index: position of the image on its topic (0-based).
        stamp_ns: image header stamp, nanoseconds.
        frame_id: image header frame (the camera optical frame).
        status: answered, dropped (published but never answered) or bad_image.
        error: why the image is bad (decoder message), else None.
        published: False when the live player could not even deserialise the message.
        scene, scene_confidence: predicted scene and its probability (None when unknown).
        camera_position, camera_orientation: estimated ``T_map_cam``, (3,) and (4,) xyzw.
        scene_position, scene_orientation: offline only: the network's own output
            ``T_scene_cam`` (what the node's frame chain starts from).
        base_position, base_orientation, covariance: the node's ``~/pose`` (live only).
        latency_ms: inference time (offline) or end-to-end latency (live).
        map_odom: live only: whether a new ``map -> odom`` correction stamped at or after
            image stamp + ``transform_tolerance`` arrived for this frame
            (``mspr_training.bags.live.assign_corrections``).
        position, orientation: estimate of the ground truth's frame (camera or base).
        gt_position, gt_orientation: interpolated ground truth at ``stamp_ns``.
        gt_scene: the scene announced in the bag at ``stamp_ns``.
        gt_error: why an answered frame has no ground truth (outside range, gap, no TF).
    """

    index: int
    stamp_ns: int
    frame_id: str
    status: FrameStatus
    error: str | None = None
    published: bool = True
    scene: str | None = None
    scene_confidence: float | None = None
    camera_position: np.ndarray | None = None
    camera_orientation: np.ndarray | None = None
    scene_position: np.ndarray | None = None
    scene_orientation: np.ndarray | None = None
    base_position: np.ndarray | None = None
    base_orientation: np.ndarray | None = None
    covariance: np.ndarray | None = None
    latency_ms: float | None = None
    map_odom: bool | None = None
    position: np.ndarray | None = None
    orientation: np.ndarray | None = None
    gt_position: np.ndarray | None = None
    gt_orientation: np.ndarray | None = None
    gt_scene: str | None = None
    gt_error: str | None = None

    @property
    def matched(self) -> bool:
        """True for an answered frame with valid ground truth."""
        return self.status == FrameStatus.ANSWERED and self.gt_position is not None


@dataclass(eq=False)
class BagEvaluation:
    """Everything one evaluation run measured.

    Attributes:
        mode: 'offline' (core Localizer) or 'live' (the node over DDS).
        bag, weights, image_topic, device: what was evaluated.
        global_frame: frame of the estimates (the node's ``global_frame_id``).
        frames: one record per image message, in bag order.
        ground_truth_source: e.g. ``topic /ground_truth/camera_pose``; None without ground truth.
        ground_truth_frame: the fixed frame of the ground truth.
        compared_frame: 'camera' or the moving frame of a TF pair (e.g. base_link).
        latency_kind: 'inference' or 'end-to-end'.
        rate: playback rate factor (live).
        node_diagnostics: the node's last ``/diagnostics`` key-values (live).
        map_odom_frames: answered frames whose new map -> odom correction, stamped at or
            after image stamp + transform_tolerance, arrived (live).
        notes: warnings for the reader of the report.
        fusion: per-frame vs fused figures on the same frames
            (``mspr_training.bags.fusion_compare.fusion_comparison``); None when absent, with
            a note.
    """

    mode: str
    bag: str
    weights: str
    image_topic: str
    global_frame: str
    frames: list[FrameRecord]
    ground_truth_source: str | None = None
    ground_truth_frame: str | None = None
    compared_frame: str = 'camera'
    latency_kind: str = 'inference'
    device: str = ''
    rate: float = 1.0
    node_diagnostics: dict[str, str] = field(default_factory=dict)
    map_odom_frames: int | None = None
    notes: list[str] = field(default_factory=list)
    fusion: dict[str, Any] | None = None


@dataclass(frozen=True)
class FrameCounts:
    """Frame accounting: ``images == answered + dropped + bad_images``.

    ``published`` counts the images the live player sent (all decodable-or-not messages it could
    deserialise); ``matched`` the answered frames with ground truth, ``unmatched`` the answered
    frames without it (only meaningful when the bag has ground truth).
    """

    images: int
    published: int
    answered: int
    dropped: int
    bad_images: int
    matched: int
    unmatched: int

    @property
    def answered_fraction(self) -> float:
        """Answered frames over all image messages (NaN for an empty bag)."""
        return self.answered / self.images if self.images else math.nan


def count_frames(frames: list[FrameRecord]) -> FrameCounts:
    """Return the frame accounting of a list of records."""
    status = [f.status for f in frames]
    answered = status.count(FrameStatus.ANSWERED)
    matched = sum(f.matched for f in frames)
    return FrameCounts(
        images=len(frames), published=sum(f.published for f in frames), answered=answered,
        dropped=status.count(FrameStatus.DROPPED), bad_images=status.count(FrameStatus.BAD_IMAGE),
        matched=matched, unmatched=answered - matched)


@dataclass(eq=False)
class BagReport:
    """The summary of a ``BagEvaluation``.

    Attributes:
        evaluation: the measured run.
        counts: frame accounting.
        latency: latency statistics of the answered frames (None when none has a latency).
        metrics: accuracy over the matched frames (None without ground truth).
        scene_accuracy_available: whether the bag announced scenes (else the metrics' scene
            accuracy columns are NaN).
        position_errors_m, orientation_errors_deg: per frame (NaN where unmatched).
    """

    evaluation: BagEvaluation
    counts: FrameCounts
    latency: TimingStats | None
    metrics: MetricsReport | None
    scene_accuracy_available: bool
    position_errors_m: np.ndarray
    orientation_errors_deg: np.ndarray

    def ape(self) -> dict[str, dict[str, float]] | None:
        """Return absolute pose error statistics of the matched frames (None without any).

        ``position_m`` and ``orientation_deg``, each ``{rmse, mean, median, std, min, max,
        count}``: the errors of the compared frame in the ground truth's frame, no alignment,
        as ``evo_ape`` computes them (``--pose_relation trans_part`` / ``angle_deg``) on the TUM
        files ``write_report`` exports.
        """
        matched = np.isfinite(self.position_errors_m)
        if not matched.any():
            return None
        return {'position_m': error_statistics(self.position_errors_m[matched]),
                'orientation_deg': error_statistics(self.orientation_errors_deg[matched])}

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict (NaN becomes None), including one entry per frame."""
        run = self.evaluation
        summary = {
            'mode': run.mode, 'bag': run.bag, 'weights': run.weights, 'device': run.device,
            'image_topic': run.image_topic, 'rate': run.rate, 'global_frame': run.global_frame,
            'ground_truth': (None if run.ground_truth_source is None else {
                'source': run.ground_truth_source, 'frame': run.ground_truth_frame,
                'compared_frame': run.compared_frame}),
            'counts': {**asdict(self.counts),
                       'answered_fraction': self.counts.answered_fraction},
            'latency': (None if self.latency is None
                        else {'kind': run.latency_kind, **asdict(self.latency)}),
            'metrics': None if self.metrics is None else self.metrics.to_dict(),
            'ape': self.ape(),
            'scene_accuracy_available': self.scene_accuracy_available,
            'map_odom_frames': run.map_odom_frames,
            'per_frame_vs_fused': run.fusion,
            'node_diagnostics': dict(run.node_diagnostics),
            'notes': list(run.notes),
            'frames': [self._frame_dict(i, f) for i, f in enumerate(run.frames)],
        }
        return jsonable(summary)

    def _frame_dict(self, i: int, frame: FrameRecord) -> dict[str, Any]:
        data = {key: value for key, value in asdict(frame).items() if value is not None}
        data['status'] = frame.status.value
        if frame.matched:
            data['position_error_m'] = self.position_errors_m[i]
            data['orientation_error_deg'] = self.orientation_errors_deg[i]
        return data

    def to_markdown(self, plots: list[str] = ()) -> str:
        """Return the report as Markdown (tables and, when given, links to the plot files)."""
        run, counts = self.evaluation, self.counts
        lines = [f'# mspr-bag-eval ({run.mode}): {Path(run.bag).name}', '',
                 f'- bag: `{run.bag}`', f'- weights: `{run.weights}`',
                 f'- image topic: `{run.image_topic}`; estimates in `{run.global_frame}`']
        if run.device:
            lines.append(f'- device: {run.device}')
        if run.mode == 'live':
            lines.append(f'- playback rate: {run.rate:g}x recorded')
        lines.append('- ground truth: ' + (
            'none in this bag (trajectory and timing only)' if run.ground_truth_source is None
            else f'{run.ground_truth_source} in `{run.ground_truth_frame}`, comparing the '
                 f'{run.compared_frame} pose'))
        lines += ['', '## Frames', '',
                  '| images | answered | dropped | bad images | answered fraction |'
                  ' with ground truth | answered without ground truth |',
                  '| --- | --- | --- | --- | --- | --- | --- |',
                  f'| {counts.images} | {counts.answered} | {counts.dropped} | '
                  f'{counts.bad_images} | {counts.answered_fraction:.3f} | {counts.matched} | '
                  f'{counts.unmatched} |', '']
        if run.mode == 'live':
            lines.append(f'{counts.published} images published; dropped = published without an '
                         'output pose (the node keeps only the newest frame, and gating may '
                         'reject frames: see the node diagnostics below).')
            if run.map_odom_frames is not None:
                lines.append(f'A new map -> odom correction, stamped at or after image stamp + '
                             f'transform_tolerance, arrived for {run.map_odom_frames} answered '
                             'frames.')
            lines.append('')
        if self.latency is not None:
            lines += [f'## Latency ({run.latency_kind})', '',
                      f'median {self.latency.median_ms:.1f} ms, p95 {self.latency.p95_ms:.1f} ms,'
                      f' mean {self.latency.mean_ms:.1f} ms over {self.latency.count} frames', '']
        if self.metrics is not None:
            position, orientation = self.ape()['position_m'], self.ape()['orientation_deg']
            lines += ['## Accuracy', '', self.metrics.to_markdown(),
                      f'Absolute pose error (as evo_ape, no alignment) over {position["count"]} '
                      f'frames: position RMSE {position["rmse"]:.3f} m, median '
                      f'{position["median"]:.3f} m; orientation RMSE {orientation["rmse"]:.2f} '
                      f'deg, median {orientation["median"]:.2f} deg.', '']
            if not self.scene_accuracy_available:
                lines += ['The bag announces no scene: scene accuracy is not available.', '']
        if run.fusion is not None:
            lines += fusion_markdown(run.fusion)
        if run.node_diagnostics:
            lines += ['## Node diagnostics (last message)', '', '| key | value |',
                      '| --- | --- |']
            lines += [f'| {k} | {v} |' for k, v in run.node_diagnostics.items()]
            lines.append('')
        if run.notes:
            lines += ['## Notes', ''] + [f'- {note}' for note in run.notes] + ['']
        if plots:
            lines += ['## Plots', ''] + [f'![{Path(p).stem}]({Path(p).name})' for p in plots]
            lines.append('')
        return '\n'.join(lines)


def error_statistics(values) -> dict[str, float]:
    """Return ``{rmse, mean, median, std, min, max, count}`` of non-empty errors (evo's set)."""
    values = np.asarray(values, dtype=np.float64)
    return {'rmse': float(np.sqrt(np.mean(values ** 2))), 'mean': float(np.mean(values)),
            'median': float(np.median(values)), 'std': float(np.std(values)),
            'min': float(np.min(values)), 'max': float(np.max(values)),
            'count': int(values.size)}


def frame_errors(frames: list[FrameRecord]) -> tuple[np.ndarray, np.ndarray]:
    """Return per-frame position (m) and orientation (deg) errors, NaN where unmatched."""
    pos = np.full(len(frames), np.nan)
    rot = np.full(len(frames), np.nan)
    matched = [i for i, f in enumerate(frames) if f.matched]
    if matched:
        pos[matched] = position_errors([frames[i].position for i in matched],
                                       [frames[i].gt_position for i in matched])
        rot[matched] = orientation_errors_deg([frames[i].orientation for i in matched],
                                              [frames[i].gt_orientation for i in matched])
    return pos, rot


def _accuracy(frames: list[FrameRecord], thresholds):
    """Return (MetricsReport or None, scene accuracy available) over the matched frames."""
    matched = [f for f in frames if f.matched]
    if not matched:
        return None, False
    with_scene = all(f.gt_scene is not None for f in matched)
    if with_scene:
        names = sorted({f.gt_scene for f in matched} | {f.scene for f in matched})
        truth = [names.index(f.gt_scene) for f in matched]
        predicted = [names.index(f.scene) for f in matched]
    else:
        names, truth, predicted = [ALL_SCENES], [0] * len(matched), [0] * len(matched)
    metrics = compute_metrics(
        names, truth, [f.gt_position for f in matched], [f.gt_orientation for f in matched],
        predicted, [f.position for f in matched], [f.orientation for f in matched],
        thresholds=thresholds)
    if not with_scene:
        # Every frame sits in the one pseudo-scene, so accuracy would read 1.0: say unknown.
        metrics.scene_accuracy = math.nan
        metrics.scenes = [replace(s, scene_accuracy=math.nan) for s in metrics.scenes]
    return metrics, with_scene


def build_report(evaluation: BagEvaluation,
                 thresholds=DEFAULT_RECALL_THRESHOLDS) -> BagReport:
    """Summarise an evaluation: accounting, latency and accuracy over matched frames."""
    frames = evaluation.frames
    latencies = [f.latency_ms for f in frames
                 if f.status == FrameStatus.ANSWERED and f.latency_ms is not None]
    latency = TimingStats.from_seconds(np.asarray(latencies) / 1e3) if latencies else None
    metrics, with_scene = _accuracy(frames, thresholds)
    pos, rot = frame_errors(frames)
    return BagReport(evaluation, count_frames(frames), latency, metrics, with_scene, pos, rot)
