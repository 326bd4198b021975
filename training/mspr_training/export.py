"""``mspr-export``: turn a training checkpoint into the deployment weights bundle.

    mspr-export --run RUN_DIR --out model.safetensors [--calibration-split crossfit]
    mspr-export --checkpoint RUN_DIR/checkpoint_000012000.pt --out model.safetensors
    mspr-export --run RUN_DIR --out model.safetensors --onnx [--opset 17]

The bundle (``mspr_ros.bundle.save_bundle``) carries the model, its scene names, the
preprocessing it was trained with, a per-scene 6x6 covariance and error correlation calibrated
on held-out images and the provenance (config, git commit, training-data fingerprint, how the
calibration was made, its metrics, the training times, time, torch version).

``--onnx`` also writes the inference graph as ONNX beside the bundle (``model.onnx``; see
:mod:`mspr_ros.onnx_backend`: input the preprocessed ``N x 3 x crop x crop`` float32 batch,
outputs position, orientation, scene log-probabilities and the selected scene, dynamic batch,
opset ``--opset``) and records in the bundle's ``inference`` entry that the bundle asks for
onnxruntime (file name, opset, SHA-256): ``Localizer(backend='auto')`` then runs it. When
onnxruntime is installed the graph is checked against the torch model on random images first;
a graph that disagrees is not written into the bundle.

The calibration split is the run's ``data.calibration_split`` unless given. 'crossfit' (the
default): the out-of-fold errors of the cross-fitting runs (:mod:`mspr_training.crossfit`):
fold k's model predicts the sequences it left out, so every training sequence is predicted by a
model that never saw it while the exported model trained on all of them; the fold runs must
exist (``mspr-train`` trains them). 'calibration': whole training sequences held out of the
exported run's training (``mspr_training.datasets.split_calibration``). A calibration split
equal to the evaluation split (``data.test_split``) is refused: a covariance fitted to the very
errors it is judged on says nothing about the next image.

Calibration, per scene: :mod:`mspr_training.calibration` (the covariance: second moment of the
held-out errors, shrunk toward isotropic per block, plus a floor; the error correlation along
each held-out walk).
"""
from __future__ import annotations

import argparse
from dataclasses import replace
import datetime
import logging
import math
from pathlib import Path
import sys
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from mspr_ros.bundle import BundleError, save_bundle
from mspr_ros.device import resolve_device
from mspr_ros.model.ms_transformer import build_model, MSTransformer
from mspr_ros.onnx_backend import DEFAULT_OPSET, onnx_path_for
from mspr_training import checkpoint as ckpt
from mspr_training.calibration import (calibrate_covariance, COVARIANCE_SCALES,
                                       DEFAULT_ORIENTATION_FLOOR_RAD, DEFAULT_POSITION_FLOOR_M,
                                       fit_correlations, parse_scale, parse_shrinkage,
                                       SCALE_CONFORMAL, SCALE_MOMENT, SHRINKAGE_OAS)
from mspr_training.config import CALIBRATION_SPLIT, ConfigError, CROSSFIT_SPLIT, TrainConfig
from mspr_training.correlation_fit import BLOCK_CHOICES, PER_BLOCK
from mspr_training.crossfit import fold_checkpoints, TrainingTime
from mspr_training.data import DatasetError, PoseSample
from mspr_training.datasets import (build_dataset, data_root as resolve_root, read_split,
                                    resolve_split, training_poses)
from mspr_training.engine import evaluate, Predictions
from mspr_training.inference_graph import int8_path_for, write_inference_graphs
from mspr_training.metrics import compute_metrics, MetricsReport, NaiveBaseline
from mspr_training.provenance import git_state
from mspr_training.quantize import training_images
from mspr_training.training_camera import checkpoint_cameras
from mspr_training.transforms import eval_transform, SeededDraws

LOGGER = logging.getLogger('mspr_training.export')
EVAL_BATCH_SIZE = 32


def model_from_checkpoint(state: dict[str, Any]) -> tuple[TrainConfig, MSTransformer]:
    """Return the run's config and its model with the checkpoint's weights (eval mode)."""
    cfg = TrainConfig.from_dict(state['config'], source=f'{state["path"]} (config)')
    # The weights come from the checkpoint: never read the ImageNet file again.
    model = build_model(replace(cfg.model, backbone_weights=None))
    model.load_state_dict(state['model'], strict=True)
    return cfg, model.eval()


def predict_samples(model: MSTransformer, cfg: TrainConfig, scene_names: Sequence[str],
                    samples: dict[str, list[PoseSample]], device: torch.device,
                    num_workers: int = 0) -> tuple[Predictions, list[PoseSample]]:
    """Return the model's predictions (predicted scene, eval transform) and their samples."""
    dataset = build_dataset(samples, scene_names)
    loader = DataLoader(SeededDraws(dataset, eval_transform(cfg.augmentation)),
                        batch_size=EVAL_BATCH_SIZE, num_workers=num_workers)
    predictions = evaluate(model.to(device), loader, device)
    return predictions, [dataset.samples[index] for index in predictions.index]


def predict_split(model: MSTransformer, cfg: TrainConfig, scene_names: Sequence[str],
                  split: str, root: str | Path | None, device: torch.device,
                  num_workers: int = 0) -> tuple[Predictions, list[PoseSample]]:
    """Return the model's predictions on a split and their samples (:func:`predict_samples`)."""
    samples = read_split(cfg.data, split, root)
    unknown = sorted(set(samples) - set(scene_names))
    if unknown:
        raise DatasetError(f'split {split!r} has scenes {unknown} the model does not know '
                           f'(its scenes: {list(scene_names)})')
    return predict_samples(model, cfg, scene_names, samples, device, num_workers)


def out_of_fold_predictions(run_dir: Path, cfg: TrainConfig, scene_names: Sequence[str],
                            root: Path, device: torch.device, num_workers: int = 0
                            ) -> tuple[Predictions, list[str], list[PoseSample], list[dict]]:
    """Return every fold run's predictions of the samples it held out, concatenated.

    Returns:
        ``(predictions, walk of each row, sample of each row, the fold runs' descriptions)``;
        a walk is one held-out sequence (or block) of one fold.

    Raises:
        CrossfitError: a fold run is missing, unfinished or stale (naming its folder).
    """
    parts, walks, samples, runs = [], [], [], []
    for fold, (state, held_out) in enumerate(fold_checkpoints(run_dir, cfg, scene_names, root)):
        _, model = model_from_checkpoint(state)
        predictions, predicted = predict_samples(model, cfg, scene_names, held_out, device,
                                                 num_workers)
        predictions.index = predictions.index + len(samples)
        parts.append(predictions)
        walks += [f'fold{fold}/{s.scene}/{s.sequence}' for s in predicted]
        samples += predicted
        runs.append({'fold': fold, 'checkpoint': state['path'],
                     'global_step': state['progress']['global_step'],
                     'epoch': state['progress']['epoch'], 'held_out_images': len(predicted),
                     'held_out_sequences': {scene: sorted({s.sequence for s in part})
                                            for scene, part in held_out.items()}})
    joined = Predictions(**{name: np.concatenate([getattr(p, name) for p in parts])
                            for name in Predictions.__annotations__})
    return joined, walks, samples, runs


class CalibrationSplitError(ValueError):
    """The calibration split is one the model is evaluated (or was trained) on."""


def check_calibration_split(cfg: TrainConfig, split: str) -> str:
    """Return the dataset split ``split`` means, refusing the evaluation and training splits.

    Raises:
        CalibrationSplitError: ``split`` resolves to ``data.test_split`` or ``data.train_split``,
            or to 'crossfit' or 'calibration' for a run trained with the other one.
    """
    resolved = resolve_split(cfg.data, split)
    trained_with = cfg.data.calibration_split
    if resolved == CROSSFIT_SPLIT and trained_with != CROSSFIT_SPLIT:
        raise CalibrationSplitError(
            f'calibration split {split!r}: the run was trained with data.calibration_split '
            f'{trained_with!r}, so mspr-train trained no cross-fitting fold runs for it')
    if resolved == CALIBRATION_SPLIT and trained_with == CROSSFIT_SPLIT:
        raise CalibrationSplitError(
            f'calibration split {split!r}: the run was trained with data.calibration_split '
            f'{CROSSFIT_SPLIT!r}, on every training sequence: none was held out; calibrate on '
            f'{CROSSFIT_SPLIT!r} (its fold runs)')
    if resolved == cfg.data.test_split:
        raise CalibrationSplitError(
            f'calibration split {split!r} is the evaluation split {resolved!r} '
            '(data.test_split): a covariance fitted to the errors it is judged on is not '
            f'calibrated; use the out-of-fold errors ({CROSSFIT_SPLIT!r}), the held-out '
            f'training sequences ({CALIBRATION_SPLIT!r}) or a split that is neither trained '
            'nor tested on')
    if resolved == cfg.data.train_split:
        raise CalibrationSplitError(
            f'calibration split {split!r} is the training split {resolved!r}: training errors '
            f'understate the errors on unseen images; use {CROSSFIT_SPLIT!r} (the out-of-fold '
            'errors of the cross-fitting runs)')
    return resolved


COVARIANCE_METHOD = ('second moment of [p_gt - p_est, rotvec(R_gt R_est^T)] over correctly '
                     'classified images, each 3x3 block shrunk toward isotropic and scaled '
                     '({scale}), plus the floor on the diagonal')
SCALE_DESCRIPTIONS = {SCALE_CONFORMAL: 'conformal: its 2-sigma ellipsoid holds the nominal share '
                                       'of the errors',
                      SCALE_MOMENT: "the second moment's"}


def export_bundle(checkpoint: str | Path, out: str | Path, *,
                  calibration_split: str | None = 'default', data_root: str | Path | None = None,
                  device: str = 'auto', position_floor_m: float = DEFAULT_POSITION_FLOOR_M,
                  orientation_floor_rad: float = DEFAULT_ORIENTATION_FLOOR_RAD,
                  shrinkage: str | float = SHRINKAGE_OAS, covariance_scale: str = SCALE_CONFORMAL,
                  num_workers: int = 0, onnx: bool = False,
                  opset: int = DEFAULT_OPSET, quantize: str | None = None,
                  int8_float_nodes: Sequence[str] = (),
                  correlation_blocks: str = PER_BLOCK) -> tuple[Path, MetricsReport | None]:
    """Write the bundle of a checkpoint (or a run folder's latest checkpoint).

    Args:
        checkpoint: checkpoint file or run folder.
        out: bundle path (``.safetensors``).
        calibration_split: where the covariance and error correlation are fitted: 'crossfit'
            (the out-of-fold predictions of the run's fold runs in ``RUN/crossfit/``),
            'calibration' (the held-out training sequences), 'default' (the run's
            ``data.calibration_split``), a split name ('val' means ``data.val_split``); None
            keeps the bundle's default covariance and no correlation. The evaluation split
            (``data.test_split``) and the training split are refused.
        data_root: dataset root; default: the root the run trained on, then ``data.root``.
        device: where calibration inference runs.
        shrinkage: covariance shrinkage toward isotropic per block, ``'oas'`` (estimated from
            the samples) or a number in [0, 1] (:mod:`mspr_training.calibration`).
        covariance_scale: ``'conformal'`` (each block scaled so that its 2-sigma ellipsoid
            holds the nominal share of the calibration errors) or ``'moment'`` (the second
            moment's scale).
        onnx: also write the ONNX inference graph beside the bundle
            (:func:`mspr_ros.onnx_backend.onnx_path_for`) and make the bundle ask for
            onnxruntime.
        opset: ONNX opset of the graph.
        quantize: 'int8' (with ``onnx``): the bundle runs the static int8 graph
            (:mod:`mspr_training.quantize`, calibrated and checked on training images) instead
            of the float one, which is written too.
        int8_float_nodes: node-name patterns the int8 graph keeps in float.
        correlation_blocks: the error correlation the bundle carries per scene:
            ``'per_block'`` (position and rotation each fitted alone; the fusion gives each
            block its own design factor; on the rendered worlds it brought the fused coverage
            nearer nominal than one model: ``benchmarks/site_calibration.py``) or ``'joint'``
            (one model fitted to the 6-D errors).

    Returns:
        ``(bundle path, calibration metrics or None)``.
    """
    state = ckpt.load_checkpoint(checkpoint)
    cfg, model = model_from_checkpoint(state)
    scene_names = list(state['scene_names'])
    root = data_root if data_root is not None else state.get('data_root') or cfg.data.root
    provenance: dict[str, Any] = {
        'config': cfg.to_dict(),
        'git_commit': git_state()['commit'] or 'unknown',
        'data_fingerprint': state['data_fingerprint'],
        'checkpoint': {'path': state['path'], 'global_step': state['progress']['global_step'],
                       'epoch': state['progress']['epoch']},
        'exported_at': datetime.datetime.now(datetime.timezone.utc).isoformat(),
        'torch_version': torch.__version__,
    }
    covariance, correlation, report = None, None, None
    if calibration_split is not None:
        if calibration_split == 'default':
            calibration_split = cfg.data.calibration_split
        split = check_calibration_split(cfg, calibration_split)
        where = resolve_device(device)
        if split == CROSSFIT_SPLIT:
            run_dir = Path(state['path']).parent
            predictions, walks, samples, fold_runs = out_of_fold_predictions(
                run_dir, cfg, scene_names, resolve_root(cfg.data, root), where, num_workers)
            method = {'method': 'cross-fitting', 'predicted_by': 'the fold runs (out of fold)',
                      'folds': cfg.data.calibration_folds,
                      'fold_assignment': 'sequence i of a scene (natural order) in fold i % K; '
                                         'a scene with fewer sequences: K blocks of frames',
                      'fold_runs': fold_runs, 'held_out_sequences_per_scene': 0,
                      'training_time': TrainingTime(run_dir).summary(
                          cfg.data.calibration_folds)}
        else:
            predictions, samples = predict_split(model, cfg, scene_names, split, root, where,
                                                 num_workers)
            walks = [f'{s.scene}/{s.sequence}' for s in samples]
            method = {'method': 'held-out walks' if split == CALIBRATION_SPLIT else 'split',
                      'predicted_by': 'the exported model',
                      'held_out_sequences_per_scene': (cfg.data.calibration_sequences
                                                       if split == CALIBRATION_SPLIT else 0)}
        calibration = calibrate_covariance(scene_names, predictions,
                                           position_floor_m=position_floor_m,
                                           orientation_floor_rad=orientation_floor_rad,
                                           shrinkage=shrinkage, scale=covariance_scale)
        covariance = calibration.covariance
        fits = fit_correlations(scene_names, predictions, walks, covariance,
                                [s.stamp_ns for s in samples])
        correlation = {scene: fit.model_for(correlation_blocks)
                       for scene, fit in fits.items() if fit is not None}
        baseline = NaiveBaseline.from_training_poses(
            training_poses(read_split(cfg.data, cfg.data.train_split, root)))
        report = compute_metrics(scene_names, predictions.gt_scene, predictions.gt_position,
                                 predictions.gt_orientation, predictions.pred_scene,
                                 predictions.pred_position, predictions.pred_orientation,
                                 thresholds=cfg.validation.recall_thresholds,
                                 baseline=baseline)
        provenance['calibration'] = {
            'split': split, 'test_split': cfg.data.test_split, **method,
            'position_floor_m': position_floor_m,
            'orientation_floor_rad': orientation_floor_rad,
            'covariance_method': COVARIANCE_METHOD.format(scale=SCALE_DESCRIPTIONS[
                calibration.scale_method]),
            'shrinkage_method': (shrinkage if isinstance(shrinkage, str)
                                 else f'fixed {float(shrinkage)}'),
            **calibration.summary(),
            'error_correlation_blocks': correlation_blocks,
            'error_correlation': {scene: None if fit is None else fit.summary()
                                  for scene, fit in fits.items()}}
        provenance['validation_metrics'] = report.to_dict()
    preprocessing = cfg.augmentation.preprocessing()
    cameras, provenance['training_camera'] = checkpoint_cameras(state, cfg, root)
    inference = None
    if onnx:
        inference = write_inference_graphs(
            model, out, preprocessing.crop, opset, provenance, quantize,
            lambda calibration, check: training_images(cfg, root, calibration, check),
            int8_float_nodes)
    elif quantize:
        raise ValueError('--quantize needs --onnx: the int8 graph is an ONNX graph')
    path = save_bundle(out, model.cpu(), model.config, scene_names,
                       preprocessing=preprocessing, covariance=covariance,
                       error_correlation=correlation, provenance=provenance,
                       inference=inference, training_camera=cameras)
    return path, report


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line of ``mspr-export``."""
    parser = argparse.ArgumentParser(
        prog='mspr-export', description='Write the deployment weights bundle of a training '
        'checkpoint, with calibrated covariance and provenance.')
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument('--checkpoint', help='checkpoint file')
    source.add_argument('--run', help='run folder (its latest checkpoint)')
    parser.add_argument('--out', required=True, help='bundle file to write (.safetensors)')
    parser.add_argument('--calibration-split', default='default',
                        help="where the covariance and error correlation are fitted (default: "
                             "the run's data.calibration_split, normally 'crossfit': the "
                             'out-of-fold errors of the fold runs mspr-train trained in '
                             "RUN_DIR/crossfit/; 'calibration': whole training sequences held "
                             "out of training; 'none' skips calibration; the evaluation split "
                             'data.test_split is refused)')
    parser.add_argument('--data-root', help='dataset root (default: the one trained on)')
    parser.add_argument('--device', default='auto', help="'auto', 'cpu', 'cuda', 'cuda:N'")
    parser.add_argument('--position-floor', type=float, default=DEFAULT_POSITION_FLOOR_M,
                        help='covariance floor, metres (standard deviation)')
    parser.add_argument('--orientation-floor-deg', type=float,
                        default=math.degrees(DEFAULT_ORIENTATION_FLOOR_RAD),
                        help='covariance floor, degrees (standard deviation)')
    parser.add_argument('--covariance-shrinkage', type=parse_shrinkage, default=SHRINKAGE_OAS,
                        help="shrinkage of each 3x3 covariance block toward isotropic: 'oas' "
                             '(default, estimated from the calibration errors) or a number in '
                             '[0, 1] (0: none); see mspr_training.calibration')
    parser.add_argument('--covariance-scale', type=parse_scale, default=SCALE_CONFORMAL,
                        metavar='{' + ','.join(COVARIANCE_SCALES) + '}',
                        help="scale of each 3x3 covariance block: 'conformal' (default: its "
                             '2-sigma ellipsoid holds the nominal 73.9 %% of the calibration '
                             "errors) or 'moment' (the errors' second moment, which heavy-tailed "
                             'errors make too large); see mspr_training.calibration')
    parser.add_argument('--error-correlation-blocks', choices=BLOCK_CHOICES, default=PER_BLOCK,
                        help="the error correlation the bundle carries: 'per_block' (default: "
                             'position and rotation fitted apart, each with its own design '
                             "factor in the fusion) or 'joint' (one model for the 6-D error); "
                             'see mspr_training.correlation_fit')
    parser.add_argument('--onnx', action='store_true',
                        help='also write the inference graph as ONNX beside the bundle '
                             '(model.safetensors -> model.onnx) and make the bundle ask for '
                             'the onnxruntime back-end')
    parser.add_argument('--opset', type=int, default=DEFAULT_OPSET,
                        help=f'ONNX opset of --onnx (default {DEFAULT_OPSET})')
    parser.add_argument('--quantize', choices=('int8',),
                        help='with --onnx: also write the static int8 QDQ graph '
                             '(model.int8.onnx; calibrated on training images, checked against '
                             'the float graph) and make the bundle run it')
    parser.add_argument('--int8-float-nodes', nargs='+', default=(), metavar='PATTERN',
                        help='ONNX node-name patterns (fnmatch) the int8 graph keeps in float '
                             "(the pose heads' last layers always are)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``mspr-export``; returns the exit status."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(levelname)s %(message)s')
    split = None if args.calibration_split.lower() == 'none' else args.calibration_split
    try:
        path, report = export_bundle(
            args.checkpoint or args.run, args.out, calibration_split=split,
            data_root=args.data_root, device=args.device,
            position_floor_m=args.position_floor,
            orientation_floor_rad=math.radians(args.orientation_floor_deg),
            shrinkage=args.covariance_shrinkage, covariance_scale=args.covariance_scale,
            onnx=args.onnx, opset=args.opset,
            quantize=args.quantize, int8_float_nodes=args.int8_float_nodes,
            correlation_blocks=args.error_correlation_blocks)
    except (BundleError, ConfigError, DatasetError, ckpt.CheckpointError, ValueError) as error:
        print(f'mspr-export: error: {error}', file=sys.stderr)
        return 2
    print(f'wrote {path}')
    if args.onnx:
        print(f'wrote {onnx_path_for(path)}')
    if args.quantize:
        print(f'wrote {int8_path_for(path)}')
    if report is not None:
        print(report.to_markdown())
    return 0


if __name__ == '__main__':
    sys.exit(main())
