"""Augmented views in the feature cache: what K views per image cost and what they buy.

For each K in ``--views`` this trains the CPU recipe (``synth_demo`` by default) on a rendered
world whose test sequences are recorded under other light, exposure and camera height than the
training ones (``mspr-synth`` default), exports the bundle (covariance from the held-out training
loops) and evaluates it on the test split. Printed and written per K: time to build the cache
(the trainer's set-up, dominated by the backbone), cache size on disk, median epoch time,
per-scene median test errors, the naive mean-position error and the covariance coverage.

    python benchmarks/feature_views.py --views 1 4 8

K = 1 is the un-augmented cache (``augmentation.enabled: false``); K > 1 turns the paper's
training augmentation on for the extra views (``feature_cache.augmented_views: K``). Writes
``results/feature_views.json`` (``.quick.json`` with ``--quick``: fewer epochs; ``--smoke``: a
handful of tiny frames, one epoch, to the work folder). Training runs go under ``--work``.
"""
import argparse
import csv
from pathlib import Path
import statistics
import sys
import time
from typing import Optional, Sequence

from common.cli import add_common_arguments, begin, parse_size, run_mode
from common.results import save_results, WORK_DIR
from mspr_training import evaluate, export, synth
from mspr_training.calibration import SHRINKAGE_OAS
from mspr_training.config import load_config
from mspr_training.train import Trainer

NAME = 'feature_views'
# Per mode: (train frames, test frames, training loops, image size, epochs or None = config's,
# default views).
SIZES = {'full': (300, 100, 6, (320, 240), None, (1, 4, 8)),
         'quick': (300, 100, 6, (320, 240), 10, (1, 4)),
         'smoke': (6, 3, 2, (96, 72), 1, (1, 2))}


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    add_common_arguments(parser)
    parser.add_argument('--work', type=Path, default=None,
                        help='work folder of the world and the training runs '
                             '(default: the benchmarks work folder)')
    parser.add_argument('--views', type=int, nargs='+', default=None,
                        help='values of K (default 1 4 8; quick 1 4; smoke 1 2)')
    parser.add_argument('--config', default='synth_demo')
    parser.add_argument('--seed', type=int, default=0, help='world seed')
    parser.add_argument('--train-frames', type=int, default=None)
    parser.add_argument('--test-frames', type=int, default=None)
    parser.add_argument('--train-sequences', type=int, default=None)
    parser.add_argument('--image-size', type=parse_size, default=None,
                        help='WIDTHxHEIGHT of the rendered world (default 320x240)')
    parser.add_argument('--epochs', type=int, default=None, help='override the config epochs')
    parser.add_argument('--set', dest='overrides', action='append', default=[],
                        help='extra config override (repeatable)')
    args = parser.parse_args(argv)
    mode = run_mode(args)
    train_frames, test_frames, sequences, size, epochs, views = SIZES[mode]
    args.train_frames = args.train_frames or train_frames
    args.test_frames = args.test_frames or test_frames
    args.train_sequences = args.train_sequences or sequences
    args.image_size = args.image_size or size
    args.epochs = args.epochs or epochs
    args.views = args.views or list(views)
    args.work = args.work or WORK_DIR / f'feature_views_{mode}'
    return args


def epoch_seconds(run_dir: Path) -> float:
    """Return the median wall time between consecutive epoch rows of the run's log."""
    with (run_dir / 'log.csv').open(newline='') as stream:
        stamps = [float(row['wall_time']) for row in csv.DictReader(stream)
                  if row['kind'] == 'epoch']
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    return statistics.median(gaps) if gaps else float('nan')


def folder_bytes(folder: Path) -> int:
    """Return the bytes of every file below ``folder``."""
    return sum(path.stat().st_size for path in folder.rglob('*') if path.is_file())


def overrides_of(views: int, args: argparse.Namespace) -> list:
    """Return the config overrides of one K."""
    # The held-out split keeps one run per K: the figures compared here are accuracy, cache
    # size and epoch time, not the covariance, so cross-fitting's fold runs would only add time.
    overrides = ['logging.progress=false', 'logging.tensorboard=false',
                 'data.calibration_split=calibration', *args.overrides]
    # Both set either way: the shipped CPU recipes now keep 4 views.
    overrides += [f'augmentation.enabled={str(views > 1).lower()}',
                  f'feature_cache.augmented_views={views}']
    if args.epochs is not None:
        overrides.append(f'schedule.epochs={args.epochs}')
    return overrides


def run_one(views: int, args: argparse.Namespace, root: Path) -> dict:
    """Train, export and evaluate one K; return its figures."""
    cfg = load_config(args.config, overrides_of(views, args))
    run_dir = args.work / f'{args.config}-views{views}-seed{args.seed}'
    started = time.perf_counter()
    trainer = Trainer(cfg, run_dir, str(root), resume='auto')
    set_up_s = time.perf_counter() - started
    trainer.fit()
    bundle, _ = export.export_bundle(run_dir, run_dir / 'model.safetensors', data_root=root,
                                     device='cpu')
    result = evaluate.evaluate_bundle(bundle, cfg.data, 'test', run_dir / 'eval',
                                      data_root=root, device='cpu')
    report = result.report
    return {
        'views': views, 'epochs': cfg.schedule.epochs, 'cache_set_up_s': set_up_s,
        'cache_mb': folder_bytes(run_dir / 'feature_cache') / 2 ** 20,
        'epoch_s': epoch_seconds(run_dir),
        'scenes': {s.scene: {'median_position_m': s.median_position_m,
                             'median_orientation_deg': s.median_orientation_deg,
                             'naive_median_position_m': s.baseline_median_position_m}
                   for s in report.scenes},
        'average_median_position_m': report.average_median_position_m,
        'average_median_orientation_deg': report.average_median_orientation_deg,
        'coverage': result.coverage.to_dict() if result.coverage is not None else None,
    }


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run every K, print a table and write the results file."""
    args = parse_args(argv)
    mode, machine, notes = begin(args)
    if mode == 'smoke':
        notes.append('smoke run: a handful of tiny frames and one epoch; the figures mean '
                     'nothing')
    for note in notes:
        print(f'note: {note}')
    args.work.mkdir(parents=True, exist_ok=True)
    world = args.work / (f'world-seed{args.seed}-{args.train_frames}-{args.test_frames}-'
                         f'{args.image_size[0]}x{args.image_size[1]}')
    synth.generate(world, formats=('cambridge',), train_frames=args.train_frames,
                   test_frames=args.test_frames, train_sequences=args.train_sequences,
                   size=args.image_size, seed=args.seed)
    rows = [run_one(views, args, world / 'cambridge') for views in args.views]
    print('| K | cache set-up s | cache MB | median epoch s | median position m per scene | '
          'average of scene medians m / deg | naive m per scene | 2σ position / rotation |')
    print('|---|---|---|---|---|---|---|---|')
    for row in rows:
        scenes = row['scenes'].values()
        coverage = row['coverage'] or {}
        inside = [100 * coverage[block]['inside'][2] if block in coverage else float('nan')
                  for block in ('position', 'rotation')]
        print(f"| {row['views']} | {row['cache_set_up_s']:.0f} | {row['cache_mb']:.1f} | "
              f"{row['epoch_s']:.1f} | "
              + ' / '.join(f"{s['median_position_m']:.2f}" for s in scenes)
              + f" | {row['average_median_position_m']:.2f} / "
              f"{row['average_median_orientation_deg']:.1f} | "
              + ' / '.join(f"{s['naive_median_position_m']:.2f}" for s in scenes)
              + f' | {inside[0]:.0f} / {inside[1]:.0f} % |')
    return save_results(
        args.out, NAME, mode, machine,
        settings={'threads': args.threads, 'config': args.config, 'world_seed': args.seed,
                  'train_frames': args.train_frames, 'test_frames': args.test_frames,
                  'train_sequences': args.train_sequences,
                  'image_size': list(args.image_size), 'epochs': rows[0]['epochs'],
                  'views': args.views, 'overrides': args.overrides,
                  'covariance_shrinkage': SHRINKAGE_OAS},
        results={'views': rows}, notes=notes)


if __name__ == '__main__':
    sys.exit(main())
