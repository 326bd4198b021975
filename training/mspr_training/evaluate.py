"""``mspr-evaluate``: run a weights bundle on a dataset split exactly as the node does.

    mspr-evaluate --weights model.safetensors --config synth_demo.yaml --data-root DIR \
        --split test --out EVAL_DIR [--attention] [--device auto]
    mspr-evaluate --weights model.safetensors --data-format cambridge --data-root DIR ...

Images go through ``mspr_ros.Localizer`` (the bundle's preprocessing, predicted scene, never the
ground truth). Writes ``metrics.json``, ``metrics.md`` (per-scene table, with the naive
"mean training pose" baseline when the training split is readable), ``per_image.csv``, the
plots ``error_cdf.png`` and ``trajectories.png``, and with ``--attention`` the attention report
(``attention/``) on a sample of the images.
"""
from __future__ import annotations

import argparse
import csv
from dataclasses import dataclass
import json
import logging
from pathlib import Path
import sys
import time
from typing import Sequence

import numpy as np

from mspr_ros.bundle import BundleError
from mspr_ros.localizer import Localizer
from mspr_ros.preprocess import preprocess_batch
from mspr_training.attention_report import collect, write_report
from mspr_training.config import ConfigError, DataConfig, load_config
from mspr_training.data import DatasetError, load_rgb, MultiSceneDataset
from mspr_training.datasets import (build_dataset, read_split, resolve_split, sample_identity,
                                    training_poses)
from mspr_training.metrics import (compute_metrics, covariance_coverage, CovarianceCoverage,
                                   DEFAULT_RECALL_THRESHOLDS, MetricsReport, NaiveBaseline,
                                   orientation_errors_deg, pose_error_vectors, position_errors)
from mspr_training.plots import plot_error_cdfs, plot_trajectories

LOGGER = logging.getLogger('mspr_training.evaluate')


@dataclass
class EvaluationResult:
    """Outputs of one evaluation.

    Attributes:
        report: the metrics.
        files: name -> path of every file written.
        coverage: how often the errors fall inside the published covariance's 1, 2, 3 sigma
            ellipsoids, and the mean NEES.
    """

    report: MetricsReport
    files: dict[str, Path]
    coverage: CovarianceCoverage | None = None


def calibration_warning(provenance: dict, split: str, train_split: str = 'train') -> str | None:
    """Return a warning when the bundle's covariance was calibrated on the evaluated split."""
    calibrated_on = (provenance.get('calibration') or {}).get('split')
    # Cross-fitted: the deployed weights saw every training walk, so errors measured there
    # are training errors, smaller than the out-of-fold ones the covariance was fitted on.
    if calibrated_on == 'crossfit' and split == train_split:
        return (f'the bundle\'s weights were trained on the {split!r} split evaluated here '
                '(its covariance comes from out-of-fold errors): the coverage says nothing '
                'about new images')
    if calibrated_on is None:
        return ('the bundle carries no calibrated covariance (exported without calibration): '
                'the coverage describes its default covariance')
    if calibrated_on == split:
        return (f'the bundle\'s covariance was calibrated on the {split!r} split evaluated '
                'here: its coverage is fitted, not measured')
    return None


def _naive_baseline(data: DataConfig, root: str | Path | None,
                    scene_names: Sequence[str]) -> NaiveBaseline | None:
    """Return the mean-training-pose baseline, or None when the training split is unreadable."""
    try:
        samples = read_split(data, data.train_split, root)
    except DatasetError as error:
        LOGGER.warning('no naive baseline: cannot read the %s split (%s)', data.train_split,
                       error)
        return None
    poses = {scene: value for scene, value in training_poses(samples).items()
             if scene in scene_names}
    return NaiveBaseline.from_training_poses(poses)


def localize_dataset(localizer: Localizer, dataset: MultiSceneDataset, batch_size: int
                     ) -> tuple[list, np.ndarray]:
    """Return the Localizer results of every image and per-image seconds (batch time / size)."""
    results, seconds = [], []
    for start in range(0, len(dataset), batch_size):
        images = [load_rgb(sample) for sample in dataset.samples[start:start + batch_size]]
        started = time.perf_counter()
        results.extend(localizer.localize_batch(images, batch_size=batch_size))
        elapsed = time.perf_counter() - started
        seconds.extend([elapsed / len(images)] * len(images))
    return results, np.asarray(seconds)


def evaluate_bundle(weights: str | Path, data: DataConfig, split: str, out_dir: str | Path, *,
                    data_root: str | Path | None = None, device: str = 'auto',
                    batch_size: int = 16,
                    thresholds: Sequence[tuple[float, float]] = DEFAULT_RECALL_THRESHOLDS,
                    attention: bool = False, attention_images: int = 16,
                    label: str | None = None) -> EvaluationResult:
    """Evaluate a bundle on one split and write every output into ``out_dir``.

    Args:
        weights: the bundle file.
        data: where the images are (a config's data section).
        split: split name ('val' = ``data.val_split``).
        out_dir: output folder.
        data_root: dataset root overriding ``data.root``.
        device: inference device.
        batch_size: images per Localizer call; per-image time is the call's time divided
            by its images (1 = the papers' single-image latency).
        thresholds: (m, deg) recall thresholds.
        attention: also write the attention report of ``attention_images`` evenly spaced images.
        label: name of the model in the attention report (default: the bundle's file stem).

    Raises:
        BundleError, DatasetError: unreadable bundle or data; a scene the bundle lacks.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    localizer = Localizer.from_file(weights, device=device)
    scene_names = localizer.scene_names
    split = resolve_split(data, split)
    samples = read_split(data, split, data_root)
    unknown = sorted(set(samples) - set(scene_names))
    if unknown:
        raise DatasetError(f'{split} split has scenes {unknown} that the bundle {weights} does '
                           f'not know (its scenes: {scene_names})')
    dataset = build_dataset(samples, scene_names)
    results, seconds = localize_dataset(localizer, dataset, batch_size)
    gt_scene = dataset.scene_of
    gt_position = np.array([s.position for s in dataset.samples])
    gt_orientation = np.array([s.orientation for s in dataset.samples])
    pred_scene = np.array([r.scene_index for r in results])
    pred_position = np.array([r.position for r in results])
    pred_orientation = np.array([r.orientation for r in results])
    report = compute_metrics(scene_names, gt_scene, gt_position, gt_orientation, pred_scene,
                             pred_position, pred_orientation, thresholds=thresholds,
                             times_s=seconds,
                             baseline=_naive_baseline(data, data_root, scene_names))
    report.extra.update(weights=str(weights), split=split, device=str(localizer.device),
                        batch_size=batch_size)
    # Every image counts, with the covariance the node would publish (the predicted scene's):
    # a misclassified image is an error a filter downstream receives too.
    coverage = covariance_coverage(
        pose_error_vectors(gt_position, gt_orientation, pred_position, pred_orientation),
        np.array([r.covariance for r in results]), gt_scene, scene_names)
    report.extra['covariance_coverage'] = coverage.to_dict()
    warning = calibration_warning(localizer.bundle.provenance, split, data.train_split)
    if warning is not None:
        LOGGER.warning('%s', warning)
        report.extra['covariance_coverage_warning'] = warning
    files = {'metrics_json': out_dir / 'metrics.json', 'metrics_md': out_dir / 'metrics.md',
             'per_image': out_dir / 'per_image.csv'}
    files['metrics_json'].write_text(json.dumps(report.to_dict(), indent=2) + '\n')
    files['metrics_md'].write_text(
        report.to_markdown() + '\n## Covariance coverage\n\n' + coverage.to_markdown()
        + (f'\nWarning: {warning}\n' if warning else ''))
    position_error = position_errors(pred_position, gt_position)
    orientation_error = orientation_errors_deg(pred_orientation, gt_orientation)
    root = Path(data_root) if data_root is not None else (
        Path(data.root) if data.root else None)
    with files['per_image'].open('w', newline='') as stream:
        writer = csv.writer(stream)
        writer.writerow(['image', 'scene', 'predicted_scene', 'scene_confidence',
                         'position_error_m', 'orientation_error_deg', 'time_ms'])
        for i, sample in enumerate(dataset.samples):
            writer.writerow([sample_identity(sample, root), scene_names[gt_scene[i]],
                             results[i].scene_name, f'{results[i].scene_confidence:.4f}',
                             f'{position_error[i]:.4f}', f'{orientation_error[i]:.3f}',
                             f'{1e3 * seconds[i]:.2f}'])
    files['error_cdf'] = plot_error_cdfs(position_error, orientation_error, gt_scene,
                                         scene_names, out_dir / 'error_cdf.png')
    files['trajectories'] = plot_trajectories(gt_position, pred_position, gt_scene, pred_scene,
                                              scene_names, out_dir / 'trajectories.png')
    if attention:
        picks = np.unique(np.linspace(0, len(dataset) - 1, min(attention_images, len(dataset)))
                          .round().astype(int))
        images = preprocess_batch([load_rgb(dataset.samples[i]) for i in picks],
                                  localizer.bundle.preprocessing).to(localizer.device)
        stats = collect(localizer.model, images)
        name = label or Path(weights).stem
        for key, path in write_report({name: stats.to_dict()}, out_dir / 'attention').items():
            files[f'attention_{key}'] = path
    return EvaluationResult(report, files, coverage)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line of ``mspr-evaluate``."""
    parser = argparse.ArgumentParser(
        prog='mspr-evaluate', description='Evaluate a weights bundle on a dataset split '
        'through the Localizer: metrics, plots, optional attention report.')
    parser.add_argument('--weights', required=True, help='weights bundle (.safetensors)')
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument('--config', help='training config whose data section names the data')
    source.add_argument('--data-format', choices=('cambridge', '7scenes'),
                        help='dataset layout under --data-root (without a config)')
    parser.add_argument('--data-root', help='dataset root (overrides the config)')
    parser.add_argument('--scenes', nargs='+', help='scenes to evaluate (default: all found)')
    parser.add_argument('--split', default='test', help="split ('val' = data.val_split)")
    parser.add_argument('--out', required=True, help='output folder')
    parser.add_argument('--attention', action='store_true', help='write the attention report')
    parser.add_argument('--attention-images', type=int, default=16,
                        help='images in the attention report sample')
    parser.add_argument('--label', help='model name in the attention report')
    parser.add_argument('--device', default='auto', help="'auto', 'cpu', 'cuda', 'cuda:N'")
    parser.add_argument('--batch-size', type=int, default=16,
                        help='images per Localizer call; per-image time = call time / images '
                             '(1 measures single-image latency, as the papers)')
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``mspr-evaluate``; returns the exit status."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(levelname)s %(message)s')
    try:
        if args.config:
            cfg = load_config(args.config)
            data, thresholds = cfg.data, cfg.validation.recall_thresholds
        else:
            data, thresholds = DataConfig(format=args.data_format), DEFAULT_RECALL_THRESHOLDS
        if args.scenes:
            data.scenes = list(args.scenes)
        result = evaluate_bundle(args.weights, data, args.split, args.out,
                                 data_root=args.data_root, device=args.device,
                                 batch_size=args.batch_size, thresholds=thresholds,
                                 attention=args.attention,
                                 attention_images=args.attention_images, label=args.label)
    except (BundleError, ConfigError, DatasetError, ValueError) as error:
        print(f'mspr-evaluate: error: {error}', file=sys.stderr)
        return 2
    print(result.report.to_markdown())
    if result.coverage is not None:
        print(result.coverage.to_markdown())
    print(f'wrote {", ".join(str(p) for p in result.files.values())}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
