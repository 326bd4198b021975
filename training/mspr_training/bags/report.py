"""Results of a rosbag evaluation (offline or live) and their report: JSON, Markdown and PNG plots.

``BagEvaluation`` holds one ``FrameRecord`` per image of the bag: whether it was answered, dropped
or undecodable, the estimate, the matched ground truth and the latency. ``build_report`` turns it
into a ``BagReport``: frame accounting, latency median/p95, and the accuracy metrics computed by
``mspr_training.metrics`` (the module ``mspr-evaluate`` uses too, so numbers are comparable).
``write_report`` writes ``report.json``, ``report.md`` and the plots (top-down trajectory with
ground truth and estimate; errors over time; latency over time); ``write_output_bag`` stores the
estimates in a new rosbag2 recording for RViz or Foxglove.
"""
from dataclasses import asdict, dataclass, field, replace
import enum
import json
import math
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
import numpy as np

from mspr_ros.geometry.transforms import Transform
from mspr_training.metrics import (compute_metrics, DEFAULT_RECALL_THRESHOLDS, MetricsReport,
                                   orientation_errors_deg, position_errors, TimingStats)

#: Group label of the metrics when the bag announces no scene.
ALL_SCENES = '(all frames)'
OUTPUT_NAMESPACE = '/mspr_bag_eval'


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
        base_position, base_orientation, covariance: the node's ``~/pose`` (live only).
        latency_ms: inference time (offline) or end-to-end latency (live).
        map_odom: live only: whether a ``map -> odom`` TF stamped image stamp +
            ``transform_tolerance`` arrived for this frame.
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
        map_odom_frames: frames answered with a map -> odom TF stamped image stamp +
            transform_tolerance (live).
        notes: warnings for the reader of the report.
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
            'scene_accuracy_available': self.scene_accuracy_available,
            'map_odom_frames': run.map_odom_frames,
            'node_diagnostics': dict(run.node_diagnostics),
            'notes': list(run.notes),
            'frames': [self._frame_dict(i, f) for i, f in enumerate(run.frames)],
        }
        return _json_ready(summary)

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
                lines.append(f'map -> odom TF stamped image stamp + transform_tolerance for '
                             f'{run.map_odom_frames} answered frames.')
            lines.append('')
        if self.latency is not None:
            lines += [f'## Latency ({run.latency_kind})', '',
                      f'median {self.latency.median_ms:.1f} ms, p95 {self.latency.p95_ms:.1f} ms,'
                      f' mean {self.latency.mean_ms:.1f} ms over {self.latency.count} frames', '']
        if self.metrics is not None:
            lines += ['## Accuracy', '', self.metrics.to_markdown()]
            if not self.scene_accuracy_available:
                lines += ['The bag announces no scene: scene accuracy is not available.', '']
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


def _json_ready(value):
    """Return ``value`` with numpy types as Python ones and NaN/inf as None."""
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, np.ndarray):
        return _json_ready(value.tolist())
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (np.integer, np.bool_)):
        return value.item()
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


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


def _seconds(frames: list[FrameRecord], origin_ns: int) -> np.ndarray:
    return np.array([(f.stamp_ns - origin_ns) / 1e9 for f in frames])


def _runs(frames: list[FrameRecord]) -> list[list[FrameRecord]]:
    """Split frames into continuous runs: a new run at a scene change or a stamp jump.

    A jump is a gap over three times the median gap between frames, so that the ground-truth
    line does not join the end of one sequence to the start of the next.
    """
    if not frames:
        return []
    gaps = np.diff([f.stamp_ns for f in frames])
    limit = 3 * np.median(gaps) if len(gaps) else 0
    runs = [[frames[0]]]
    for gap, previous, frame in zip(gaps, frames, frames[1:]):
        if gap > limit or frame.gt_scene != previous.gt_scene:
            runs.append([])
        runs[-1].append(frame)
    return runs


def plot_trajectory(report: BagReport, path) -> Path:
    """Top-down (x, y) plot: ground truth line, estimates coloured by predicted scene."""
    frames = report.evaluation.frames
    figure = Figure(figsize=(7.0, 6.0), layout='constrained')
    axes = figure.subplots()
    matched = [f for f in frames if f.matched]
    for number, run in enumerate(_runs(matched)):
        truth = np.array([f.gt_position for f in run])
        axes.plot(truth[:, 0], truth[:, 1], '-', color='black', lw=1.5,
                  label='ground truth' if number == 0 else None)
        for frame in run:
            axes.plot([frame.gt_position[0], frame.position[0]],
                      [frame.gt_position[1], frame.position[1]], '-', color='0.75', lw=0.6,
                      zorder=1)
    answered = [f for f in frames if f.status == FrameStatus.ANSWERED]
    for scene in sorted({f.scene for f in answered if f.scene is not None}) or [None]:
        group = [f for f in answered if f.scene == scene]
        if not group:
            continue
        points = np.array([f.position if f.matched else f.camera_position for f in group])
        axes.scatter(points[:, 0], points[:, 1], s=12, zorder=2,
                     label=f'estimate ({scene})' if scene else 'estimate')
    if not answered:
        axes.text(0.5, 0.5, 'no frame was answered', ha='center', transform=axes.transAxes)
    run = report.evaluation
    axes.set(xlabel=f'x in {run.global_frame} (m)', ylabel=f'y in {run.global_frame} (m)',
             title=f'{Path(run.bag).name} ({run.mode}): {run.compared_frame} trajectory')
    axes.set_aspect('equal', adjustable='datalim')
    axes.grid(True, alpha=0.3)
    if answered or matched:
        axes.legend(fontsize='small')
    figure.savefig(path, dpi=110)
    return Path(path)


def plot_errors(report: BagReport, path) -> Path:
    """Position and orientation error of each matched frame over bag time."""
    frames = report.evaluation.frames
    origin = frames[0].stamp_ns
    index = {id(f): i for i, f in enumerate(frames)}
    figure = Figure(figsize=(8.0, 5.0), layout='constrained')
    top, bottom = figure.subplots(2, 1, sharex=True)
    for run in _runs([f for f in frames if f.matched]):
        rows = [index[id(f)] for f in run]
        times = _seconds(run, origin)
        top.plot(times, report.position_errors_m[rows], '.-', lw=0.8, color='tab:blue')
        bottom.plot(times, report.orientation_errors_deg[rows], '.-', lw=0.8,
                    color='tab:orange')
    top.set(ylabel='position error (m)',
            title=f'{Path(report.evaluation.bag).name}: errors over time')
    bottom.set(ylabel='orientation error (deg)', xlabel='bag time (s)')
    for axes in (top, bottom):
        axes.grid(True, alpha=0.3)
    figure.savefig(path, dpi=110)
    return Path(path)


def plot_latency(report: BagReport, path) -> Path:
    """Latency of each answered frame over bag time; dropped frames marked on the axis."""
    frames = report.evaluation.frames
    times = _seconds(frames, frames[0].stamp_ns)
    answered = np.array([f.latency_ms is not None for f in frames])
    dropped = np.array([f.status == FrameStatus.DROPPED for f in frames])
    figure = Figure(figsize=(8.0, 3.5), layout='constrained')
    axes = figure.subplots()
    axes.plot(times[answered], [f.latency_ms for f in frames if f.latency_ms is not None],
              '.-', lw=0.8, label=f'{report.evaluation.latency_kind} latency')
    if dropped.any():
        axes.plot(times[dropped], np.zeros(int(dropped.sum())), 'x', color='tab:red',
                  label='dropped')
    if report.latency is not None:
        axes.axhline(report.latency.median_ms, color='0.4', ls='--', lw=0.8, label='median')
        axes.axhline(report.latency.p95_ms, color='0.4', ls=':', lw=0.8, label='p95')
    axes.set(xlabel='bag time (s)', ylabel='latency (ms)',
             title=f'{Path(report.evaluation.bag).name}: latency per frame')
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize='small')
    figure.savefig(path, dpi=110)
    return Path(path)


@dataclass(frozen=True)
class ReportFiles:
    """Paths written by ``write_report``."""

    json: Path
    markdown: Path
    plots: list[Path]


def write_report(report: BagReport, out_dir) -> ReportFiles:
    """Write ``report.json``, ``report.md`` and the PNG plots into ``out_dir`` (created)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = [plot_trajectory(report, out_dir / 'trajectory.png')]
    if report.metrics is not None:
        plots.append(plot_errors(report, out_dir / 'errors.png'))
    if report.latency is not None:
        plots.append(plot_latency(report, out_dir / 'latency.png'))
    data = report.to_dict()
    data['plots'] = [p.name for p in plots]
    json_path = out_dir / 'report.json'
    json_path.write_text(json.dumps(data, indent=1, allow_nan=False) + '\n')
    markdown_path = out_dir / 'report.md'
    markdown_path.write_text(report.to_markdown([str(p) for p in plots]))
    return ReportFiles(json_path, markdown_path, plots)


def write_output_bag(evaluation: BagEvaluation, path, storage: str = 'mcap') -> Path:
    """Write the estimates (and interpolated ground truth) into a new rosbag2 recording.

    Topics under ``/mspr_bag_eval``: ``camera_pose`` (PoseStamped), ``pose``
    (PoseWithCovarianceStamped, the node's base pose, live only), ``scene`` (String),
    ``scene_confidence`` (Float32) and ``ground_truth`` (PoseStamped of the compared frame at
    the image stamps); every message is logged at its image stamp.
    """
    # Imported here: bag_from_dataset holds the typed writer; importing it at module level
    # would make the report depend on the dataset readers for nothing.
    from mspr_training.bags.from_dataset import OutputBag
    frame = evaluation.global_frame
    with OutputBag(path, storage) as bag:
        for record in evaluation.frames:
            if record.status != FrameStatus.ANSWERED:
                continue
            stamp = record.stamp_ns
            if record.camera_position is not None:
                bag.write_pose(f'{OUTPUT_NAMESPACE}/camera_pose', stamp, frame,
                               Transform(record.camera_position, record.camera_orientation))
            if record.base_position is not None:
                covariance = (record.covariance if record.covariance is not None
                              else np.zeros((6, 6)))
                bag.write_pose_with_covariance(
                    f'{OUTPUT_NAMESPACE}/pose', stamp, frame,
                    Transform(record.base_position, record.base_orientation), covariance)
            if record.scene is not None:
                bag.write_string(f'{OUTPUT_NAMESPACE}/scene', stamp, record.scene)
            if record.scene_confidence is not None:
                bag.write_float32(f'{OUTPUT_NAMESPACE}/scene_confidence', stamp,
                                  record.scene_confidence)
            if record.matched:
                bag.write_pose(f'{OUTPUT_NAMESPACE}/ground_truth', stamp,
                               evaluation.ground_truth_frame or frame,
                               Transform(record.gt_position, record.gt_orientation))
    return Path(path)
