"""The paper's central claim at equal training budget: MS-Transformer baseline vs ours.

Trains the baseline (``synth_baseline``: learned positional encoding, no QKA loss) and ours
(``synth_demo``: fixed 2-D sine encoding + QKA loss, lambda 0.1) with the real trainer on the
same rendered world, the same seeds, data, epochs and every other setting (the script refuses
configs that differ elsewhere), then reports side by side:

- per-scene median position / orientation errors with the predicted scene (the papers' test),
  their averages, scene-classification accuracy, recall, and the naive mean-pose baseline;
- the encoder self-attention statistics of the NeurIPS 2024 analysis on test images, per branch
  and layer: attention entropy, query/key centroid distance and query-region purity.

Sizes: ``--smoke`` seconds, ``--quick`` ~10 min, default under an hour on 2 CPU cores (the
frozen-backbone demo model, backbone maps cached once and shared by both runs). On a GPU with
real data: ``--ours-config 7scenes_ours --baseline-config 7scenes_baseline --data-root DIR
--epochs 30`` runs the paper's schedule (see benchmarks/README.md).

Usage: ``python benchmarks/accuracy.py [--quick | --smoke] [--seeds 0 1]``
"""
import argparse
from dataclasses import dataclass
import os
from pathlib import Path
import shutil
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from common import add_common_arguments, apply_omp_wait_policy, default_out, parse_size, run_mode
from common import set_threads, start_report, WORK_DIR, write_results
from mspr_ros.model.attention_stats import AttentionStats
from mspr_training import checkpoint as ckpt
from mspr_training.attention_report import collect, to_markdown, write_report
from mspr_training.config import load_config, TrainConfig
from mspr_training.data.samples import load_rgb
from mspr_training.datasets import build_dataset, read_split
from mspr_training.export import model_from_checkpoint
from mspr_training.synth import generate
from mspr_training.train import train
from mspr_training.transforms import eval_transform

NAME = 'accuracy'
LABELS = ('baseline', 'ours')
# The only settings in which the two runs may differ: the two fixes of the paper.
METHOD_KEYS = ('model.position_encoding', 'loss.lambda_aux')


@dataclass
class Budget:
    """Data and schedule of one mode: rendered frames per scene, epochs, LR step, seeds.

    The rendered world is the one ``synth_demo`` is made for (3 scenes, 300 training and 100
    test frames each, 320x240); the learning rate drops after two thirds of the epochs, as in
    the config (30 epochs, step 20).
    """

    train_frames: int
    test_frames: int
    image_size: tuple
    epochs: int
    step_size: int
    seeds: tuple
    attention_images: int


BUDGETS = {
    'full': Budget(train_frames=300, test_frames=100, image_size=(320, 240), epochs=30,
                   step_size=20, seeds=(0, 1, 2), attention_images=24),
    'quick': Budget(train_frames=300, test_frames=100, image_size=(320, 240), epochs=20,
                    step_size=13, seeds=(0,), attention_images=12),
    'smoke': Budget(train_frames=6, test_frames=3, image_size=(96, 72), epochs=1,
                    step_size=1, seeds=(0,), attention_images=2),
}


@dataclass
class RunResult:
    """One trained model: its metrics (``MetricsReport.to_dict()``) and attention statistics."""

    label: str
    seed: int
    config: str
    train_seconds: float
    metrics: Dict[str, Any]
    attention: Dict[str, Any]


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    add_common_arguments(parser)
    parser.add_argument('--ours-config', default='synth_demo',
                        help='config of our method (file or bundled name)')
    parser.add_argument('--baseline-config', default='synth_baseline',
                        help='config of the MS-Transformer baseline')
    parser.add_argument('--data-root', type=Path, default=None,
                        help='dataset root of the configs\' format (default: render the '
                             'synthetic world)')
    parser.add_argument('--epochs', type=int, default=None, help='epochs of both runs')
    parser.add_argument('--step-size', type=int, default=None, help='StepLR step of both runs')
    parser.add_argument('--seeds', type=int, nargs='+', default=None,
                        help='one baseline/ours pair per seed')
    parser.add_argument('--device', default='auto', help="'auto', 'cpu', 'cuda', 'cuda:N'")
    parser.add_argument('--train-frames', type=int, default=None,
                        help='rendered training frames per scene')
    parser.add_argument('--test-frames', type=int, default=None,
                        help='rendered test frames per scene')
    parser.add_argument('--image-size', type=parse_size, default=None,
                        help='WIDTHxHEIGHT of the rendered images')
    parser.add_argument('--attention-images', type=int, default=None,
                        help='test images for the attention statistics')
    args = parser.parse_args(argv)
    budget = BUDGETS[run_mode(args)]
    args.budget = Budget(
        train_frames=args.train_frames or budget.train_frames,
        test_frames=args.test_frames or budget.test_frames,
        image_size=args.image_size or budget.image_size,
        epochs=args.epochs or budget.epochs,
        step_size=args.step_size or min(budget.step_size, args.epochs or budget.epochs),
        seeds=tuple(args.seeds) if args.seeds else budget.seeds,
        attention_images=args.attention_images or budget.attention_images)
    return args


def shared_overrides(budget: Budget, seed: int, device: str, data_root: Optional[Path]
                     ) -> List[str]:
    """Return the overrides applied identically to both runs (schedule, seeds, bookkeeping)."""
    overrides = [f'schedule.epochs={budget.epochs}', f'schedule.step_size={budget.step_size}',
                 f'seed.torch={seed}', f'seed.numpy={seed + 2}', f'seed.python={seed}',
                 f'seed.sampler={seed}', 'checkpoint.every_epochs=0',
                 'checkpoint.every_iters=0', 'validation.every_epochs=0',
                 'validation.at_end=true', 'logging.progress=false',
                 'logging.tensorboard=false', f'device={device}']
    if data_root is None:
        overrides += ['data.format=cambridge', 'data.scenes=null']
    return overrides


def flatten(data: Dict[str, Any], prefix: str = '') -> Dict[str, Any]:
    """Return a nested dict as ``{'section.key': value}``."""
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f'{prefix}{key}.'))
        else:
            flat[f'{prefix}{key}'] = value
    return flat


def check_equal_budget(configs: Dict[str, TrainConfig]) -> None:
    """Raise ValueError when the two configs differ in anything but the paper's two fixes."""
    base, ours = (flatten(configs[label].to_dict()) for label in LABELS)
    differing = sorted(key for key in set(base) | set(ours)
                       if key not in METHOD_KEYS and base.get(key) != ours.get(key))
    if differing:
        raise ValueError(f'{configs["baseline"].source} and {configs["ours"].source} differ in '
                         f'{differing}: not an equal-budget comparison (only {METHOD_KEYS} '
                         'may differ)')


def rendered_world(budget: Budget) -> Path:
    """Render (or reuse) the 3-scene world in the Cambridge layout; return its root."""
    folder = WORK_DIR / (f'accuracy_world_{budget.train_frames}_{budget.test_frames}_'
                         f'{budget.image_size[0]}x{budget.image_size[1]}')
    started = time.perf_counter()
    manifest = generate(folder, formats=('cambridge',), num_scenes=3,
                        train_frames=budget.train_frames, test_frames=budget.test_frames,
                        size=budget.image_size)
    print(f"{'reused' if manifest.cached else 'rendered'} world in {folder} "
          f'({time.perf_counter() - started:.0f} s): {manifest.counts}', flush=True)
    return folder / 'cambridge'


def attention_images(cfg: TrainConfig, root: Path, scene_names: Sequence[str],
                     count: int) -> torch.Tensor:
    """Return ``count`` evenly spaced validation images, ``count x 3 x crop x crop``."""
    dataset = build_dataset(read_split(cfg.data, 'val', root), scene_names)
    picks = np.unique(np.linspace(0, len(dataset) - 1, min(count, len(dataset)))
                      .round().astype(int))
    transform = eval_transform(cfg.augmentation)
    return torch.stack([transform(load_rgb(dataset.samples[i])) for i in picks])


def train_and_analyse(label: str, cfg: TrainConfig, run_dir: Path, root: Path,
                      shared_cache: Path, budget: Budget) -> RunResult:
    """Train one model from scratch, then collect its attention statistics."""
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    # Both runs read the same frozen-backbone maps: compute them once.
    shared_cache.mkdir(parents=True, exist_ok=True)
    os.symlink(shared_cache, run_dir / 'feature_cache', target_is_directory=True)
    started = time.perf_counter()
    result = train(cfg, run_dir, str(root))
    seconds = time.perf_counter() - started
    if result.metrics is None:
        raise RuntimeError(f'{run_dir}: training produced no validation metrics')
    state = ckpt.load_checkpoint(result.checkpoint)
    _, model = model_from_checkpoint(state)
    images = attention_images(cfg, root, state['scene_names'], budget.attention_images)
    stats: AttentionStats = collect(model, images)
    return RunResult(label=label, seed=cfg.seed.torch, config=cfg.source,
                     train_seconds=seconds, metrics=result.metrics.to_dict(),
                     attention=stats.to_dict())


def mean_over_seeds(runs: Sequence[RunResult], label: str) -> Dict[str, Any]:
    """Return the seed-averaged headline figures of one method."""
    mine = [run for run in runs if run.label == label]
    scenes = [s['scene'] for s in mine[0].metrics['scenes']]

    def average(values: List[float]) -> float:
        return float(np.mean(values))

    return {
        'seeds': [run.seed for run in mine],
        'average_median_position_m': average(
            [r.metrics['average_median_position_m'] for r in mine]),
        'average_median_orientation_deg': average(
            [r.metrics['average_median_orientation_deg'] for r in mine]),
        'scene_accuracy': average([r.metrics['scene_accuracy'] for r in mine]),
        'per_scene': {scene: {
            'median_position_m': average([r.metrics['scenes'][i]['median_position_m']
                                          for r in mine]),
            'median_orientation_deg': average([r.metrics['scenes'][i]['median_orientation_deg']
                                               for r in mine]),
            'scene_accuracy': average([r.metrics['scenes'][i]['scene_accuracy'] for r in mine])}
            for i, scene in enumerate(scenes)},
        'mean_entropy': {branch: average([layer['entropy'] for r in mine
                                          for layer in r.attention[branch]])
                         for branch in ('position', 'orientation')},
        'mean_centroid_distance': {branch: average([layer['centroid_distance'] for r in mine
                                                    for layer in r.attention[branch]])
                                   for branch in ('position', 'orientation')},
        'mean_purity': {branch: average([layer['purity_mean'] for r in mine
                                         for layer in r.attention[branch]])
                        for branch in ('position', 'orientation')},
        'train_seconds': average([r.train_seconds for r in mine]),
    }


def print_comparison(runs: Sequence[RunResult], summary: Dict[str, Dict[str, Any]]) -> None:
    """Print metrics and attention statistics of both methods side by side."""
    for seed in sorted({run.seed for run in runs}):
        pair = {run.label: run for run in runs if run.seed == seed}
        print(f'\nseed {seed}: median position (m) / orientation (deg), predicted scene')
        print(f"{'scene':<12}{'baseline':>18}{'ours':>18}{'naive mean pose':>20}"
              f"{'scene acc b / o':>18}")
        for index, scene in enumerate(pair['ours'].metrics['scenes']):
            base = pair['baseline'].metrics['scenes'][index]
            print(f"{scene['scene']:<12}"
                  f"{base['median_position_m']:>9.3f} / {base['median_orientation_deg']:>5.2f}"
                  f"{scene['median_position_m']:>9.3f} / {scene['median_orientation_deg']:>5.2f}"
                  f"{scene['baseline_median_position_m']:>11.3f} / "
                  f"{scene['baseline_median_orientation_deg']:>5.2f}"
                  f"{base['scene_accuracy']:>10.3f} / {scene['scene_accuracy']:.3f}")
        ours, base = pair['ours'].metrics, pair['baseline'].metrics
        print(f"{'average':<12}"
              f"{base['average_median_position_m']:>9.3f} / "
              f"{base['average_median_orientation_deg']:>5.2f}"
              f"{ours['average_median_position_m']:>9.3f} / "
              f"{ours['average_median_orientation_deg']:>5.2f}"
              f"{ours['baseline_average_median_position_m']:>11.3f} / "
              f"{ours['baseline_average_median_orientation_deg']:>5.2f}"
              f"{base['scene_accuracy']:>10.3f} / {ours['scene_accuracy']:.3f}")
        print(f'\nseed {seed}: encoder self-attention on test images\n')
        print(to_markdown({label: pair[label].attention for label in LABELS}))
    if len({run.seed for run in runs}) > 1:
        print('mean over seeds (average median m / deg, scene accuracy, mean entropy t / rot):')
        for label in LABELS:
            s = summary[label]
            print(f"{label:<10}{s['average_median_position_m']:.3f} / "
                  f"{s['average_median_orientation_deg']:.2f}  {s['scene_accuracy']:.3f}  "
                  f"{s['mean_entropy']['position']:.3f} / {s['mean_entropy']['orientation']:.3f}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the benchmark; return the exit status."""
    args = parse_args(argv)
    apply_omp_wait_policy(args)
    mode = run_mode(args)
    budget = args.budget
    set_threads(args.threads)
    machine, notes = start_report(args.threads)
    if mode == 'smoke':
        notes.append('smoke run: a handful of images and one epoch; the figures mean nothing')
    for note in notes:
        print(f'note: {note}')
    root = args.data_root if args.data_root is not None else rendered_world(budget)
    work = WORK_DIR / f'accuracy_runs_{mode}'
    runs: List[RunResult] = []
    resolved = {}
    for seed in budget.seeds:
        overrides = shared_overrides(budget, seed, args.device, args.data_root)
        configs = {'baseline': load_config(args.baseline_config, overrides),
                   'ours': load_config(args.ours_config, overrides)}
        check_equal_budget(configs)
        for label in LABELS:
            print(f'seed {seed}: training {label} ({configs[label].source}, '
                  f'{budget.epochs} epochs)', flush=True)
            runs.append(train_and_analyse(label, configs[label], work / f'{label}_seed{seed}',
                                          Path(root), work / 'feature_cache', budget))
            print(f'  {runs[-1].train_seconds:.0f} s, average median '
                  f"{runs[-1].metrics['average_median_position_m']:.3f} m / "
                  f"{runs[-1].metrics['average_median_orientation_deg']:.2f} deg, scene "
                  f"accuracy {runs[-1].metrics['scene_accuracy']:.3f}", flush=True)
        resolved = {label: cfg.to_dict() for label, cfg in configs.items()}
    summary = {label: mean_over_seeds(runs, label) for label in LABELS}
    print_comparison(runs, summary)
    first_seed = budget.seeds[0]
    plots = write_report({run.label: run.attention for run in runs if run.seed == first_seed},
                         work / 'attention')
    print(f"attention plots: {plots['entropy_plot']}, {plots['purity_plot']}")
    out = write_results(
        args.out or default_out(NAME, mode), NAME, mode, machine,
        settings={'threads': args.threads, 'budget': budget,
                  'data_root': str(args.data_root) if args.data_root else 'rendered world',
                  'configs': {'baseline': args.baseline_config, 'ours': args.ours_config},
                  'resolved_configs': resolved},
        results={'summary': summary, 'runs': runs}, notes=notes)
    print(f'\nwrote {out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
