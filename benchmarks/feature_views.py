"""Augmented views in the feature cache: what K views per image cost and what they buy.

For each K in ``--views`` this trains the CPU recipe (``synth_demo`` by default) on a rendered
world whose test sequences are recorded under other light, exposure and camera height than the
training ones (``mspr-synth`` default), exports the bundle (covariance from the held-out training
loops) and evaluates it on the test split. Printed per K: time to build the cache (the trainer's
set-up, dominated by the backbone), cache size on disk, median epoch time, per-scene median test
errors, the naive mean-position error and the covariance coverage.

    python benchmarks/feature_views.py --out /tmp/views --views 1 4 8

K = 1 is the un-augmented cache (``augmentation.enabled: false``); K > 1 turns the paper's
training augmentation on for the extra views (``feature_cache.augmented_views: K``).
"""
import argparse
import csv
import json
from pathlib import Path
import statistics
import sys
import time

from mspr_training import evaluate, export, synth
from mspr_training.config import load_config
from mspr_training.train import Trainer


def parse_args(argv=None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out', type=Path, required=True, help='work folder')
    parser.add_argument('--views', type=int, nargs='+', default=[1, 4])
    parser.add_argument('--config', default='synth_demo')
    parser.add_argument('--seed', type=int, default=0, help='world seed')
    parser.add_argument('--train-frames', type=int, default=300)
    parser.add_argument('--test-frames', type=int, default=100)
    parser.add_argument('--train-sequences', type=int, default=6)
    parser.add_argument('--epochs', type=int, default=None, help='override the config epochs')
    parser.add_argument('--set', dest='overrides', action='append', default=[],
                        help='extra config override (repeatable)')
    return parser.parse_args(argv)


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


def run_one(views: int, args: argparse.Namespace, root: Path) -> dict:
    """Train, export and evaluate one K; return its figures."""
    overrides = ['logging.progress=false', 'logging.tensorboard=false', *args.overrides]
    # Both set either way: the shipped CPU recipes now keep 4 views.
    overrides += [f'augmentation.enabled={str(views > 1).lower()}',
                  f'feature_cache.augmented_views={views}']
    if args.epochs is not None:
        overrides.append(f'schedule.epochs={args.epochs}')
    cfg = load_config(args.config, overrides)
    run_dir = args.out / f'{args.config}-views{views}-seed{args.seed}'
    started = time.perf_counter()
    trainer = Trainer(cfg, run_dir, str(root), resume='auto')
    set_up_s = time.perf_counter() - started
    trainer.fit()
    bundle, _ = export.export_bundle(run_dir, run_dir / 'model.safetensors', data_root=root,
                                     device='cpu')
    result = evaluate.evaluate_bundle(bundle, cfg.data, 'test', run_dir / 'eval',
                                      data_root=root, device='cpu')
    report = result.report
    figures = {
        'views': views, 'config': args.config, 'world_seed': args.seed,
        'cache_set_up_s': round(set_up_s, 1),
        'cache_mb': round(folder_bytes(run_dir / 'feature_cache') / 2 ** 20, 1),
        'epoch_s': round(epoch_seconds(run_dir), 1),
        'scenes': {s.scene: {'median_position_m': s.median_position_m,
                             'median_orientation_deg': s.median_orientation_deg,
                             'naive_median_position_m': s.baseline_median_position_m}
                   for s in report.scenes},
        'average_median_position_m': report.average_median_position_m,
        'average_median_orientation_deg': report.average_median_orientation_deg,
        'coverage': result.coverage.to_dict() if result.coverage is not None else None,
    }
    (run_dir / 'figures.json').write_text(json.dumps(figures, indent=2) + '\n')
    return figures


def main(argv=None) -> int:
    """Run every K and print a table."""
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    world = args.out / f'world-seed{args.seed}'
    synth.generate(world, formats=('cambridge',), train_frames=args.train_frames,
                   test_frames=args.test_frames, train_sequences=args.train_sequences,
                   seed=args.seed)
    rows = [run_one(views, args, world / 'cambridge') for views in args.views]
    print('| K | cache set-up s | cache MB | epoch s | median position m per scene | '
          'average m / deg | naive m per scene | 2σ position / rotation |')
    print('|---|---|---|---|---|---|---|---|')
    for row in rows:
        scenes = row['scenes'].values()
        coverage = row['coverage']
        print(f"| {row['views']} | {row['cache_set_up_s']} | {row['cache_mb']} | "
              f"{row['epoch_s']} | "
              + ' / '.join(f"{s['median_position_m']:.2f}" for s in scenes)
              + f" | {row['average_median_position_m']:.2f} / "
              f"{row['average_median_orientation_deg']:.1f} | "
              + ' / '.join(f"{s['naive_median_position_m']:.2f}" for s in scenes)
              + f" | {100 * coverage['position']['inside'][2]:.0f} / "
              f"{100 * coverage['rotation']['inside'][2]:.0f} % |")
    return 0


if __name__ == '__main__':
    sys.exit(main())
