"""Every PNG plot of the project (matplotlib ``Figure`` objects, no pyplot state, Agg rendering).

Evaluation (``mspr-evaluate``):

- ``plot_error_cdfs``: cumulative distribution of position and orientation errors per scene.
- ``plot_trajectories``: per scene, a top-down view of ground truth vs prediction. "Top-down"
  is the plane of the two principal axes of the scene's ground-truth positions, so it needs no
  knowledge of the dataset's up axis (camera paths are spread far more horizontally than
  vertically).

Attention diagnostics (``mspr_training.attention_report``):

- ``plot_attention_entropy`` / ``plot_purity_histograms``: the NeurIPS 2024 analysis (their
  Fig. 5 and Fig. 2/6) for one or several models side by side.

Rosbag evaluation (``mspr-bag-eval``, data prepared by ``mspr_training.bags.report``):

- ``plot_map_trajectory``: x, y in the map frame: ground-truth runs, error segments, estimates
  per predicted scene;
- ``plot_errors_over_time`` and ``plot_latency_over_time``: per frame over bag time.

Figures are built with ``matplotlib.figure.Figure`` rather than pyplot so that plotting holds no
global state (safe beside the live evaluator's threads) and needs no backend selection.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

from matplotlib.figure import Figure
import numpy as np

_DPI = 110
_GRID_ALPHA = 0.3


def new_figure(width: float, height: float, rows: int = 1, columns: int = 1, **subplots):
    """Return (figure, axes) with constrained layout; ``subplots`` go to ``Figure.subplots``."""
    figure = Figure(figsize=(width, height), layout='constrained')
    return figure, figure.subplots(rows, columns, **subplots)


def save(figure: Figure, path: str | Path) -> Path:
    """Write ``figure`` as PNG to ``path`` (parent folders created) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=_DPI)
    return path


def _grid(count: int) -> tuple[int, int]:
    """Return (rows, columns) of a near-square grid of ``count`` panels."""
    columns = int(np.ceil(np.sqrt(count)))
    return int(np.ceil(count / columns)), columns


def _finish_axes(axes, legend: bool = True, fontsize: str = 'small', **labels):
    """Set labels and title, draw the light grid and (when asked) the legend."""
    axes.set(**labels)
    axes.grid(True, alpha=_GRID_ALPHA)
    if legend:
        axes.legend(fontsize=fontsize)


def plot_error_cdfs(position_error: np.ndarray, orientation_error: np.ndarray,
                    scene_index: np.ndarray, scene_names: Sequence[str],
                    path: str | Path) -> Path:
    """Plot per-scene CDFs of position (m) and orientation (deg) errors side by side."""
    figure, (ax_pos, ax_rot) = new_figure(11, 4.2, 1, 2)
    for index, name in enumerate(scene_names):
        mask = scene_index == index
        if not mask.any():
            continue
        fraction = np.arange(1, mask.sum() + 1) / mask.sum()
        ax_pos.step(np.sort(position_error[mask]), fraction, where='post', label=name)
        ax_rot.step(np.sort(orientation_error[mask]), fraction, where='post', label=name)
    for axis, unit, linthresh in ((ax_pos, 'position error (m)', 0.1),
                                  (ax_rot, 'orientation error (deg)', 1.0)):
        axis.set_xscale('symlog', linthresh=linthresh)
        axis.set_ylim(0, 1.02)
        _finish_axes(axis, legend=False, xlabel=unit, ylabel='fraction of images')
    ax_pos.legend(loc='lower right', fontsize='small')
    figure.suptitle('Error CDF per scene (predicted scene)')
    return save(figure, path)


def top_down_axes(points: np.ndarray) -> np.ndarray:
    """Return the 3 x 2 projection onto the two principal axes of ``points`` (N x 3)."""
    centred = points - points.mean(axis=0)
    if points.shape[0] < 2:
        return np.eye(3)[:, :2]
    _, _, rows = np.linalg.svd(centred, full_matrices=False)
    return rows[:2].T


def _error_segments(axis, truth_2d: np.ndarray, estimate_2d: np.ndarray):
    """Draw a thin grey line from each ground-truth point to its estimate."""
    for (gx, gy), (px, py) in zip(truth_2d, estimate_2d):
        axis.plot([gx, px], [gy, py], color='0.75', linewidth=0.6, zorder=1)


def plot_trajectories(gt_position: np.ndarray, pred_position: np.ndarray,
                      scene_index: np.ndarray, pred_scene: np.ndarray,
                      scene_names: Sequence[str], path: str | Path) -> Path:
    """Plot, per scene, ground-truth positions and predictions (joined by error lines).

    Images whose scene was mispredicted are drawn as red crosses (their position is in the
    predicted scene's frame).
    """
    present = [i for i in range(len(scene_names)) if (scene_index == i).any()]
    rows, columns = _grid(len(present))
    figure, axes = new_figure(5 * columns, 4.5 * rows, rows, columns, squeeze=False)
    for axis in axes.flat[len(present):]:
        axis.set_visible(False)
    for axis, index in zip(axes.flat, present):
        mask = scene_index == index
        projection = top_down_axes(gt_position[mask])
        origin = gt_position[mask].mean(axis=0)
        gt_2d = (gt_position[mask] - origin) @ projection
        pred_2d = (pred_position[mask] - origin) @ projection
        wrong = pred_scene[mask] != index
        _error_segments(axis, gt_2d, pred_2d)
        axis.plot(gt_2d[:, 0], gt_2d[:, 1], '.', color='tab:blue', markersize=4,
                  label='ground truth', zorder=2)
        axis.plot(pred_2d[~wrong, 0], pred_2d[~wrong, 1], '.', color='tab:orange',
                  markersize=4, label='prediction', zorder=3)
        if wrong.any():
            axis.plot(pred_2d[wrong, 0], pred_2d[wrong, 1], 'x', color='tab:red',
                      markersize=5, label='wrong scene', zorder=4)
        axis.set_aspect('equal', adjustable='datalim')
        _finish_axes(axis, fontsize='x-small', title=scene_names[index],
                     xlabel='principal axis 1 (m)', ylabel='principal axis 2 (m)')
    figure.suptitle('Top-down trajectories: ground truth vs prediction')
    return save(figure, path)


def plot_map_trajectory(truth_runs: Sequence[np.ndarray], matched_truth: np.ndarray,
                        matched_estimate: np.ndarray, estimates: Mapping[str, np.ndarray],
                        frame: str, title: str, path: str | Path) -> Path:
    """Top-down (x, y) plot in one fixed frame: ground-truth lines, estimates per group.

    Args:
        truth_runs: ground-truth positions (N_i, 3) of each continuous run (one line each, so
            that jumps between sequences are not joined).
        matched_truth, matched_estimate: (M, 3) pairs joined by error segments.
        estimates: label -> (K, 3) estimated positions, one scatter colour per label.
        frame: the fixed frame's name, for the axis labels.
        title: the plot title.
        path: PNG to write.
    """
    figure, axes = new_figure(7.0, 6.0)
    for number, run in enumerate(truth_runs):
        axes.plot(run[:, 0], run[:, 1], '-', color='black', lw=1.5,
                  label='ground truth' if number == 0 else None)
    if len(matched_truth):
        _error_segments(axes, np.asarray(matched_truth)[:, :2],
                        np.asarray(matched_estimate)[:, :2])
    for label, points in estimates.items():
        axes.scatter(points[:, 0], points[:, 1], s=12, zorder=2, label=label)
    if not estimates:
        axes.text(0.5, 0.5, 'no frame was answered', ha='center', transform=axes.transAxes)
    axes.set_aspect('equal', adjustable='datalim')
    _finish_axes(axes, legend=bool(estimates or truth_runs), xlabel=f'x in {frame} (m)',
                 ylabel=f'y in {frame} (m)', title=title)
    return save(figure, path)


def plot_errors_over_time(runs: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
                          title: str, path: str | Path) -> Path:
    """Position and orientation error over time, one line per ``(times_s, pos_m, rot_deg)`` run."""
    figure, (top, bottom) = new_figure(8.0, 5.0, 2, 1, sharex=True)
    for times, position_error, orientation_error in runs:
        top.plot(times, position_error, '.-', lw=0.8, color='tab:blue')
        bottom.plot(times, orientation_error, '.-', lw=0.8, color='tab:orange')
    _finish_axes(top, legend=False, ylabel='position error (m)', title=title)
    _finish_axes(bottom, legend=False, ylabel='orientation error (deg)', xlabel='bag time (s)')
    return save(figure, path)


def plot_latency_over_time(times_s: np.ndarray, latency_ms: np.ndarray,
                           dropped_times_s: np.ndarray, kind: str, title: str,
                           path: str | Path, median_ms: float | None = None,
                           p95_ms: float | None = None) -> Path:
    """Latency of each answered frame over time; dropped frames marked at zero."""
    figure, axes = new_figure(8.0, 3.5)
    axes.plot(times_s, latency_ms, '.-', lw=0.8, label=f'{kind} latency')
    if len(dropped_times_s):
        axes.plot(dropped_times_s, np.zeros(len(dropped_times_s)), 'x', color='tab:red',
                  label='dropped')
    for value, style, label in ((median_ms, '--', 'median'), (p95_ms, ':', 'p95')):
        if value is not None:
            axes.axhline(value, color='0.4', ls=style, lw=0.8, label=label)
    _finish_axes(axes, xlabel='bag time (s)', ylabel='latency (ms)', title=title)
    return save(figure, path)


def _branch_panels(figure_title: str, ylabel: str, sharey: bool = False):
    """Return (figure, axes pair) of the two encoder branches side by side."""
    figure, axes = new_figure(11, 4.2, 1, 2, sharey=sharey)
    figure.suptitle(figure_title)
    axes[0].set_ylabel(ylabel)
    return figure, axes


def plot_attention_entropy(stats: Mapping[str, dict], path: str | Path) -> Path:
    """Plot attention entropy per encoder layer, both branches, one line per model.

    Args:
        stats: label -> ``AttentionStats.to_dict()``.
    """
    figure, axes = _branch_panels('Encoder self-attention entropy per layer',
                                  'attention entropy (nats)', sharey=True)
    for axis, branch in zip(axes, ('position', 'orientation')):
        for label, model_stats in stats.items():
            entropy = [layer['entropy'] for layer in model_stats[branch]]
            axis.plot(np.arange(1, len(entropy) + 1), entropy, 'o-', label=label)
        axis.xaxis.get_major_locator().set_params(integer=True)
        _finish_axes(axis, legend=False, title=f'{branch} encoder', xlabel='encoder layer')
    axes[0].legend(fontsize='small')
    return save(figure, path)


def plot_purity_histograms(stats: Mapping[str, dict], path: str | Path) -> Path:
    """Plot the query-region purity histogram (all layers pooled) per branch and model."""
    figure, axes = _branch_panels('Query-region purity (1 = queries only, no keys mixed in)',
                                  'fraction of queries')
    width = 0.8 / max(len(stats), 1)
    for axis, branch in zip(axes, ('position', 'orientation')):
        for offset, (label, model_stats) in enumerate(stats.items()):
            layers = model_stats[branch]
            counts = np.sum([layer['purity_histogram'] for layer in layers], axis=0)
            edges = np.asarray(layers[0]['purity_bin_edges'])
            centres = 0.5 * (edges[:-1] + edges[1:])
            step = edges[1] - edges[0]
            axis.bar(centres + (offset - (len(stats) - 1) / 2) * width * step,
                     counts / max(counts.sum(), 1), width=width * step, label=label)
        _finish_axes(axis, legend=False, title=f'{branch} encoder',
                     xlabel='purity of query neighbourhoods (fraction of queries)')
    axes[0].legend(fontsize='small')
    return save(figure, path)
