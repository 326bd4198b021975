"""PNG plots of an evaluation and of the attention diagnostics (matplotlib, Agg backend).

- ``plot_error_cdfs``: cumulative distribution of position and orientation errors per scene.
- ``plot_trajectories``: per scene, a top-down view of ground truth vs prediction. "Top-down"
  is the plane of the two principal axes of the scene's ground-truth positions, so it needs no
  knowledge of the dataset's up axis (camera paths are spread far more horizontally than
  vertically).
- ``plot_attention_entropy`` / ``plot_purity_histograms``: the NeurIPS 2024 analysis (their
  Fig. 5 and Fig. 2/6) for one or several models side by side.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402

_DPI = 110


def _grid(count: int) -> tuple[int, int]:
    """Return (rows, columns) of a near-square grid of ``count`` panels."""
    columns = int(np.ceil(np.sqrt(count)))
    return int(np.ceil(count / columns)), columns


def _save(figure: plt.Figure, path: str | Path) -> Path:
    """Write ``figure`` to ``path`` and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=_DPI, bbox_inches='tight')
    plt.close(figure)
    return path


def plot_error_cdfs(position_error: np.ndarray, orientation_error: np.ndarray,
                    scene_index: np.ndarray, scene_names: Sequence[str],
                    path: str | Path) -> Path:
    """Plot per-scene CDFs of position (m) and orientation (deg) errors side by side."""
    figure, (ax_pos, ax_rot) = plt.subplots(1, 2, figsize=(11, 4.2))
    for index, name in enumerate(scene_names):
        mask = scene_index == index
        if not mask.any():
            continue
        fraction = np.arange(1, mask.sum() + 1) / mask.sum()
        ax_pos.step(np.sort(position_error[mask]), fraction, where='post', label=name)
        ax_rot.step(np.sort(orientation_error[mask]), fraction, where='post', label=name)
    for axis, unit in ((ax_pos, 'position error (m)'), (ax_rot, 'orientation error (deg)')):
        axis.set_xscale('symlog', linthresh=0.1 if 'm)' in unit else 1.0)
        axis.set_xlabel(unit)
        axis.set_ylabel('fraction of images')
        axis.set_ylim(0, 1.02)
        axis.grid(True, alpha=0.3)
    ax_pos.legend(loc='lower right', fontsize='small')
    figure.suptitle('Error CDF per scene (predicted scene)')
    return _save(figure, path)


def top_down_axes(points: np.ndarray) -> np.ndarray:
    """Return the 3 x 2 projection onto the two principal axes of ``points`` (N x 3)."""
    centred = points - points.mean(axis=0)
    if points.shape[0] < 2:
        return np.eye(3)[:, :2]
    _, _, rows = np.linalg.svd(centred, full_matrices=False)
    return rows[:2].T


def plot_trajectories(gt_position: np.ndarray, pred_position: np.ndarray,
                      scene_index: np.ndarray, pred_scene: np.ndarray,
                      scene_names: Sequence[str], path: str | Path) -> Path:
    """Plot, per scene, ground-truth positions and predictions (joined by error lines).

    Images whose scene was mispredicted are drawn as red crosses (their position is in the
    predicted scene's frame).
    """
    present = [i for i in range(len(scene_names)) if (scene_index == i).any()]
    rows, columns = _grid(len(present))
    figure, axes = plt.subplots(rows, columns, figsize=(5 * columns, 4.5 * rows),
                                squeeze=False)
    for axis in axes.flat[len(present):]:
        axis.set_visible(False)
    for axis, index in zip(axes.flat, present):
        mask = scene_index == index
        projection = top_down_axes(gt_position[mask])
        origin = gt_position[mask].mean(axis=0)
        gt_2d = (gt_position[mask] - origin) @ projection
        pred_2d = (pred_position[mask] - origin) @ projection
        wrong = pred_scene[mask] != index
        for (gx, gy), (px, py) in zip(gt_2d, pred_2d):
            axis.plot([gx, px], [gy, py], color='0.75', linewidth=0.6, zorder=1)
        axis.plot(gt_2d[:, 0], gt_2d[:, 1], '.', color='tab:blue', markersize=4,
                  label='ground truth', zorder=2)
        axis.plot(pred_2d[~wrong, 0], pred_2d[~wrong, 1], '.', color='tab:orange',
                  markersize=4, label='prediction', zorder=3)
        if wrong.any():
            axis.plot(pred_2d[wrong, 0], pred_2d[wrong, 1], 'x', color='tab:red',
                      markersize=5, label='wrong scene', zorder=4)
        axis.set_title(scene_names[index])
        axis.set_xlabel('principal axis 1 (m)')
        axis.set_ylabel('principal axis 2 (m)')
        axis.set_aspect('equal', adjustable='datalim')
        axis.grid(True, alpha=0.3)
        axis.legend(loc='best', fontsize='x-small')
    figure.suptitle('Top-down trajectories: ground truth vs prediction')
    return _save(figure, path)


def plot_attention_entropy(stats: Mapping[str, dict], path: str | Path) -> Path:
    """Plot attention entropy per encoder layer, both branches, one line per model.

    Args:
        stats: label -> ``AttentionStats.to_dict()``.
    """
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for axis, branch in zip(axes, ('position', 'orientation')):
        for label, model_stats in stats.items():
            entropy = [layer['entropy'] for layer in model_stats[branch]]
            axis.plot(np.arange(1, len(entropy) + 1), entropy, 'o-', label=label)
        axis.set_title(f'{branch} encoder')
        axis.set_xlabel('encoder layer')
        axis.grid(True, alpha=0.3)
        axis.xaxis.get_major_locator().set_params(integer=True)
    axes[0].set_ylabel('attention entropy (nats)')
    axes[0].legend(fontsize='small')
    figure.suptitle('Encoder self-attention entropy per layer')
    return _save(figure, path)


def plot_purity_histograms(stats: Mapping[str, dict], path: str | Path) -> Path:
    """Plot the query-region purity histogram (all layers pooled) per branch and model."""
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2))
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
        axis.set_title(f'{branch} encoder')
        axis.set_xlabel('purity of query neighbourhoods (fraction of queries)')
        axis.grid(True, alpha=0.3)
    axes[0].set_ylabel('fraction of queries')
    axes[0].legend(fontsize='small')
    figure.suptitle('Query-region purity (1 = queries only, no keys mixed in)')
    return _save(figure, path)
