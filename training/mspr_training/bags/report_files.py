"""Files of a rosbag evaluation: report.json, report.md, PNG plots, TUM trajectories, a bag.

``write_report`` writes into one folder:

- ``report.json`` and ``report.md`` (``BagReport.to_dict`` / ``to_markdown``);
- the plots, drawn by ``mspr_training.plots``: ``trajectory.png`` (top-down, ground truth and
  estimates), ``errors.png`` (errors over bag time, with ground truth), ``latency.png``;
- the trajectories in TUM format (``mspr_training.bags.tum``), so that ``evo_ape`` /
  ``evo_rpe`` run on them as on any SLAM output:
  ``estimate.tum``: the estimate of the compared frame (the ground truth's frame, else the
  camera) at each answered image stamp where it is known; ``ground_truth.tum`` (with ground
  truth): the ground truth interpolated at the stamps of the matched frames, so both files hold
  the same stamps and ``evo_ape ground_truth.tum estimate.tum`` reproduces ``report.json``'s
  ``ape`` (no alignment).

``write_output_bag`` stores the estimates in a new rosbag2 recording for RViz or Foxglove.
"""
from dataclasses import dataclass
import json
from pathlib import Path

import numpy as np

from mspr_ros.geometry.transforms import Transform
from mspr_training import plots
from mspr_training.bags.report import BagEvaluation, BagReport, FrameRecord, FrameStatus
from mspr_training.bags.tum import write_tum
from mspr_training.bags.writer import BagWriter

OUTPUT_NAMESPACE = '/mspr_bag_eval'
ESTIMATE_TUM = 'estimate.tum'
GROUND_TRUTH_TUM = 'ground_truth.tum'


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
    run = report.evaluation
    matched = [f for f in run.frames if f.matched]
    answered = [f for f in run.frames if f.status == FrameStatus.ANSWERED]
    estimates = {}
    for scene in sorted({f.scene for f in answered if f.scene is not None}) or [None]:
        group = [f for f in answered if f.scene == scene]
        if group:
            estimates[f'estimate ({scene})' if scene else 'estimate'] = np.array(
                [f.position if f.matched else f.camera_position for f in group])
    return plots.plot_map_trajectory(
        [np.array([f.gt_position for f in part]) for part in _runs(matched)],
        np.array([f.gt_position for f in matched]).reshape(-1, 3),
        np.array([f.position for f in matched]).reshape(-1, 3), estimates, run.global_frame,
        f'{Path(run.bag).name} ({run.mode}): {run.compared_frame} trajectory', path)


def plot_errors(report: BagReport, path) -> Path:
    """Position and orientation error of each matched frame over bag time."""
    frames = report.evaluation.frames
    index = {id(f): i for i, f in enumerate(frames)}
    runs = []
    for part in _runs([f for f in frames if f.matched]):
        rows = [index[id(f)] for f in part]
        runs.append((_seconds(part, frames[0].stamp_ns), report.position_errors_m[rows],
                     report.orientation_errors_deg[rows]))
    return plots.plot_errors_over_time(
        runs, f'{Path(report.evaluation.bag).name}: errors over time', path)


def plot_latency(report: BagReport, path) -> Path:
    """Latency of each answered frame over bag time; dropped frames marked on the axis."""
    frames = report.evaluation.frames
    times = _seconds(frames, frames[0].stamp_ns)
    timed = np.array([f.latency_ms is not None for f in frames])
    dropped = np.array([f.status == FrameStatus.DROPPED for f in frames])
    latency = report.latency
    return plots.plot_latency_over_time(
        times[timed], [f.latency_ms for f in frames if f.latency_ms is not None],
        times[dropped], report.evaluation.latency_kind,
        f'{Path(report.evaluation.bag).name}: latency per frame', path,
        median_ms=None if latency is None else latency.median_ms,
        p95_ms=None if latency is None else latency.p95_ms)


@dataclass(frozen=True)
class ReportFiles:
    """Paths written by ``write_report``."""

    json: Path
    markdown: Path
    plots: list[Path]
    trajectories: list[Path]


def compared_estimates(evaluation: BagEvaluation) -> list[FrameRecord]:
    """Return the answered frames whose estimate of the compared frame is known, in order.

    Matched frames carry it (``position``); without a match only a camera comparison has it
    (the camera pose itself).
    """
    camera = evaluation.compared_frame == 'camera'
    return [f for f in evaluation.frames
            if f.matched or (camera and f.status == FrameStatus.ANSWERED
                             and f.camera_position is not None)]


def write_trajectories(evaluation: BagEvaluation, out_dir) -> list[Path]:
    """Write ``estimate.tum`` and, with ground truth, ``ground_truth.tum`` (module docstring)."""
    out_dir = Path(out_dir)
    frame = evaluation.compared_frame
    estimated = compared_estimates(evaluation)
    written = [write_tum(
        out_dir / ESTIMATE_TUM, [f.stamp_ns for f in estimated],
        [f.position if f.matched else f.camera_position for f in estimated],
        [f.orientation if f.matched else f.camera_orientation for f in estimated],
        comment=f'{frame} estimated by mspr-bag-eval ({evaluation.mode}) in '
                f'{evaluation.global_frame}; bag {evaluation.bag}')]
    matched = [f for f in evaluation.frames if f.matched]
    if matched:
        written.append(write_tum(
            out_dir / GROUND_TRUTH_TUM, [f.stamp_ns for f in matched],
            [f.gt_position for f in matched], [f.gt_orientation for f in matched],
            comment=f'{frame} ground truth ({evaluation.ground_truth_source}) in '
                    f'{evaluation.ground_truth_frame}, interpolated at the image stamps'))
    return written


def write_report(report: BagReport, out_dir) -> ReportFiles:
    """Write the report, plots and TUM trajectories into ``out_dir`` (created)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = [plot_trajectory(report, out_dir / 'trajectory.png')]
    if report.metrics is not None:
        figures.append(plot_errors(report, out_dir / 'errors.png'))
    if report.latency is not None:
        figures.append(plot_latency(report, out_dir / 'latency.png'))
    trajectories = write_trajectories(report.evaluation, out_dir)
    data = report.to_dict()
    data['plots'] = [p.name for p in figures]
    data['trajectories'] = [p.name for p in trajectories]
    json_path = out_dir / 'report.json'
    json_path.write_text(json.dumps(data, indent=1, allow_nan=False) + '\n')
    markdown_path = out_dir / 'report.md'
    markdown_path.write_text(report.to_markdown([str(p) for p in figures]))
    return ReportFiles(json_path, markdown_path, figures, trajectories)


def write_output_bag(evaluation: BagEvaluation, path, storage: str = 'mcap') -> Path:
    """Write the estimates (and interpolated ground truth) into a new rosbag2 recording.

    Topics under ``/mspr_bag_eval``: ``camera_pose`` (PoseStamped), ``pose``
    (PoseWithCovarianceStamped, the node's base pose, live only), ``scene`` (String),
    ``scene_confidence`` (Float32) and ``ground_truth`` (PoseStamped of the compared frame at
    the image stamps); every message is logged at its image stamp.
    """
    frame = evaluation.global_frame
    with BagWriter(path, storage) as bag:
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
