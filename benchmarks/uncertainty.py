"""Honest uncertainty on trained models (issue 25): cross-fitting vs a held-out walk, fusion.

For each rendered world (``--world-seeds``: the world the recipes were tuned on, and one
generated at benchmark time from another seed that nothing was tuned on) and each training seed,
with the real trainer, exporter and bag evaluator:

1. **cross-fitting** (``data.calibration_split: crossfit``, the shipped default): the deployed
   model trains on every training walk, ``calibration_folds`` fold models each without a share
   of the walks; ``mspr-export`` fits the covariance and the error correlation on the fold
   models' out-of-fold errors. Its training time and the fold runs' extra time are recorded.
2. **held-out walk** (``data.calibration_split: calibration``, the old default): the deployed
   model trains without the last walk of each scene, which calibrates the covariance.

The cross-fitted run is exported once per covariance scale (``--covariance-scales``: the
shipped ``conformal`` first, then ``moment``, the second moment's scale before it), from the
same checkpoint and the same out-of-fold errors, so the scales differ in nothing else. The
goals are judged on the first.

Both bundles are evaluated on the test walks (other light, exposure and camera height) through
the Localizer: median position and orientation error per scene and the per-frame covariance's
2-sigma coverage. The cross-fitted bundle is then run on a rosbag2 recording of the test walks
with drifting wheel odometry (``mspr-synth``'s bag) by ``mspr-bag-eval``'s offline replay, which
runs the node's own frame processor and fusion: per frame vs fused median, p95, jitter and 2-sigma
coverage for position and rotation, with the fusion using the bundle's learned error
correlation (the node's default) and, for contrast, counting every frame as independent (the
behaviour before issue 25). No figure is computed from the true noise: the covariance and the
correlation the node uses are those the exporter fitted.

The goals of issue 25, judged per world: cross-fitted accuracy equal to training on all walks
within the seed spread (the deployed cross-fitted model *is* trained on all walks; the table
shows what the held-out recipe loses); per-frame and fused 2-sigma coverage within 10 points of
nominal for position and rotation; fused jitter at most 0.2 of per-frame; fused p95 not above
per-frame.

``--replay-from RESULTS.json`` trains nothing: it replays the bundles that run exported (they
must still be in the work folder) through today's bag evaluator and fusion, and writes the
file again with new replays and goals; the training, export and per-frame evaluation figures are
the source run's, and the file says so (``replayed_from``: the source file and its commit).

Sizes: ``--smoke`` seconds (figures mean nothing), ``--quick`` one training seed at 20 epochs
(~30 min on 2 CPU cores for two worlds), default three seeds at the recipe's 30 epochs.

Usage: ``python benchmarks/uncertainty.py [--quick | --smoke] [--world-seeds 0 1] [--seeds 0]``
"""
import argparse
from dataclasses import dataclass, replace
import json
from pathlib import Path
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from common import add_common_arguments, begin, default_out, run_mode, WORK_DIR, write_results
from common.results import fresh_run_dir
from mspr_ros.bundle import load_bundle
from mspr_ros.localizer import Localizer
from mspr_training.bags.offline import evaluate_offline
from mspr_training.calibration import COVARIANCE_SCALES, parse_scale
from mspr_training.config import load_config
from mspr_training.correlation_fit import JOINT
from mspr_training.evaluate import evaluate_bundle
from mspr_training.export import export_bundle
from mspr_training.metrics import NOMINAL_COVERAGE_3D
from mspr_training.synth import generate
from mspr_training.train import train

NAME = 'uncertainty'
RECIPES = ('crossfit', 'held_out')
SPLITS = {'crossfit': ['data.calibration_split=crossfit'],
          'held_out': ['data.calibration_split=calibration', 'data.calibration_sequences=1']}
CORRELATION_MODES = ('bundle', 'independent')
COVERAGE_TOLERANCE_POINTS = 10.0
JITTER_GOAL = 0.2


@dataclass(frozen=True)
class Budget:
    """Rendered frames per scene, image size, walks, schedule, seeds and the bag's rate."""

    train_frames: int
    test_frames: int
    image_size: tuple
    train_sequences: int
    test_sequences: int
    epochs: int
    step_size: int
    seeds: tuple
    bag_rate_hz: float


BUDGETS = {
    'full': Budget(300, 100, (320, 240), 6, 2, 30, 24, (0, 1, 2), 10.0),
    'quick': Budget(300, 100, (320, 240), 6, 2, 20, 16, (0,), 10.0),
    'smoke': Budget(8, 6, (96, 72), 2, 1, 1, 1, (0,), 10.0),
}


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    add_common_arguments(parser)
    parser.add_argument('--config', default='synth_demo', help='recipe (default synth_demo)')
    parser.add_argument('--world-seeds', type=int, nargs='+', default=[0, 1])
    parser.add_argument('--seeds', type=int, nargs='+', help='training seeds (default: mode)')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--folds', type=int,
                        help="cross-fitting's data.calibration_folds (default: the recipe's)")
    parser.add_argument('--crossfit-only', action='store_true',
                        help='train only the cross-fitted recipe (e.g. to compare --folds)')
    parser.add_argument('--replay-from', type=Path, metavar='RESULTS_JSON',
                        help="replay the bundles of that run's results again (no training)")
    parser.add_argument('--covariance-scales', type=parse_scale, nargs='+',
                        default=list(COVARIANCE_SCALES),
                        help='mspr-export --covariance-scale of each cross-fitted bundle, the '
                             'first judged by the goals (default: conformal moment)')
    args = parser.parse_args(argv)
    args.recipes = ('crossfit',) if args.crossfit_only else RECIPES
    args.splits = {recipe: SPLITS[recipe] for recipe in args.recipes}
    if args.folds is not None:
        args.splits['crossfit'] = [*SPLITS['crossfit'], f'data.calibration_folds={args.folds}']
    budget = BUDGETS[run_mode(args)]
    args.budget = replace(budget, seeds=tuple(args.seeds)) if args.seeds else budget
    return args


def rendered_world(budget: Budget, seed: int, site: Optional[Tuple[int, int]] = None) -> Path:
    """Render (or reuse) the world of ``seed`` (Cambridge layout and a bag of its test walks).

    ``site``: ``(frames, walks)`` per scene of a ``site`` split drawn as the test walks are,
    in a folder of its own (the train and test walks are the same as without it).
    """
    folder = WORK_DIR / (f'uncertainty_world_seed{seed}_{budget.train_frames}_'
                         f'{budget.test_frames}_{budget.image_size[0]}x{budget.image_size[1]}'
                         + (f'_site{site[0]}x{site[1]}' if site else ''))
    started = time.perf_counter()
    site_frames, site_sequences = site or (0, 1)
    manifest = generate(folder, formats=('cambridge', 'bag'), num_scenes=3,
                        train_frames=budget.train_frames, test_frames=budget.test_frames,
                        size=budget.image_size, seed=seed,
                        train_sequences=budget.train_sequences,
                        test_sequences=budget.test_sequences, bag_rate_hz=budget.bag_rate_hz,
                        site_frames=site_frames, site_sequences=site_sequences)
    print(f"{'reused' if manifest.cached else 'rendered'} world in {folder} "
          f'({time.perf_counter() - started:.0f} s): {manifest.counts}', flush=True)
    return folder


def overrides(budget: Budget, seed: int, device: str, split: List[str]) -> List[str]:
    """Return the config overrides of one run (schedule, seeds, bookkeeping, calibration)."""
    return [f'schedule.epochs={budget.epochs}', f'schedule.step_size={budget.step_size}',
            f'seed.torch={seed}', f'seed.numpy={seed + 2}', f'seed.python={seed}',
            f'seed.sampler={seed}', 'checkpoint.every_epochs=0', 'checkpoint.every_iters=0',
            'validation.every_epochs=0', 'validation.at_end=false', 'logging.progress=false',
            'logging.tensorboard=false', f'device={device}', 'data.format=cambridge',
            'data.scenes=null', *split]


def train_recipe(recipe: str, split: List[str], config: str, budget: Budget, seed: int,
                 device: str, world: Path, run_dir: Path, shared_cache: Path,
                 scales: Sequence[str]) -> Dict[str, Any]:
    """Train one recipe, export and evaluate a bundle per covariance scale; return figures.

    The first scale's figures are the recipe's; each scale's are under ``scales``.
    """
    cfg = load_config(config, overrides(budget, seed, device, split))
    fresh_run_dir(run_dir, shared_cache)
    root = world / 'cambridge'
    started = time.perf_counter()
    result = train(cfg, run_dir, str(root))
    seconds = time.perf_counter() - started
    exported = {scale: export_and_evaluate(run_dir, run_dir / f'model.{scale}.safetensors', cfg,
                                           root, device, scale, run_dir / f'eval.{scale}')
                for scale in scales}
    first = exported[scales[0]]
    return {'recipe': recipe, 'seed': seed, 'train_seconds': seconds,
            'timing': result.timing, **first, 'scales': exported}


def export_and_evaluate(run_dir: Path, out: Path, cfg, root: Path, device: str, scale: str,
                        eval_dir: Path, calibration_split: str = 'default',
                        correlation_blocks: str = JOINT) -> Dict[str, Any]:
    """Export a run's bundle, evaluate it on the test walks; return its figures.

    ``cfg`` is the run's config, ``root`` the dataset root; ``calibration_split`` and
    ``correlation_blocks`` are ``mspr-export``'s (the run's own split by default).
    """
    bundle_path, _ = export_bundle(run_dir, out, calibration_split=calibration_split,
                                   data_root=root, device=device, covariance_scale=scale,
                                   correlation_blocks=correlation_blocks)
    evaluation = evaluate_bundle(bundle_path, cfg.data, cfg.data.test_split, eval_dir,
                                 data_root=root, device=device,
                                 thresholds=cfg.validation.recall_thresholds)
    bundle = load_bundle(bundle_path)
    calibration = bundle.provenance.get('calibration', {})
    return {'bundle': str(bundle_path), 'metrics': evaluation.report.to_dict(),
            'coverage': evaluation.coverage.to_dict(),
            'calibration_method': calibration.get('method'),
            'covariance_scale': {'method': calibration.get('scale_method'),
                                 'factors': calibration.get('scale')},
            'error_correlation': {scene: model.to_dict()
                                  for scene, model in bundle.error_correlation.items()}}


def replay(bundle_path: str, world: Path, device: str,
           parameters: Dict[str, Any]) -> Dict[str, Any]:
    """Return the bag evaluator's per-frame vs fused comparison for each correlation mode."""
    localizer = Localizer(load_bundle(bundle_path), device=device)
    comparisons = {}
    for mode in CORRELATION_MODES:
        evaluation = evaluate_offline(world / 'bag', localizer,
                                      parameters={**parameters, 'fusion.error_correlation': mode})
        comparisons[mode] = {'fusion': evaluation.fusion, 'notes': evaluation.notes}
    return comparisons


def goals(runs: List[Dict[str, Any]], world: int) -> Dict[str, Any]:
    """Return the issue's goals for one world, each with its figures and verdict."""
    mine = [run for run in runs if run['world_seed'] == world]
    nominal = 100.0 * NOMINAL_COVERAGE_3D[2]

    def per_seed(recipe: str, key: str) -> List[float]:
        return [run[recipe]['metrics'][key] for run in mine if recipe in run]

    accuracy = {}
    for key in ('average_median_position_m', 'average_median_orientation_deg'):
        crossfit, held = per_seed('crossfit', key), per_seed('held_out', key)
        spread = float(np.std(crossfit, ddof=1)) if len(crossfit) > 1 else None
        accuracy[key] = {'crossfit': crossfit, 'held_out': held, 'crossfit_std': spread}
    coverage_gaps, jitter, p95 = [], [], []
    for run in mine:
        fused = run['replay']['bundle']['fusion']
        if not fused:
            continue
        for estimate in ('per_frame', 'fused'):
            for block in ('position', 'rotation'):
                value = fused[estimate]['coverage_2sigma'][block]
                coverage_gaps.append(abs(100.0 * value - nominal))
        ratios = fused['ratios_fused_over_per_frame']
        jitter += [ratios['jitter_position_m'], ratios['jitter_orientation_deg']]
        p95 += [ratios['p95_position'], ratios['p95_orientation']]
    return {
        'accuracy': accuracy,
        'coverage_worst_gap_points': max(coverage_gaps) if coverage_gaps else None,
        'coverage_met': bool(coverage_gaps) and max(coverage_gaps) <= COVERAGE_TOLERANCE_POINTS,
        'jitter_worst_ratio': max(jitter) if jitter else None,
        'jitter_met': bool(jitter) and max(jitter) <= JITTER_GOAL,
        'p95_worst_ratio': max(p95) if p95 else None,
        'p95_met': bool(p95) and max(p95) <= 1.0,
    }


def load_source(path: Path) -> Tuple[Dict[str, Any], Dict[str, Any], Dict[str, Path]]:
    """Return an earlier run's results file, what a run over it records of it, and its worlds.

    The record: the file's name, commit, world budget and recipe; the worlds: ``recorded_worlds``.
    """
    source = json.loads(Path(path).read_text())
    settings = source['settings']
    record = {'file': Path(path).name, 'commit': source['provenance']['git']['commit'],
              'budget': settings['budget'], 'config': settings.get('config')}
    return source, record, recorded_worlds(settings)


def recorded_worlds(settings: Dict[str, Any]) -> Dict[int, Path]:
    """Return the world folder of each world seed a results file's ``settings`` name.

    The worlds are rendered again (the same seed and budget give the same world) when the
    work folder lost them.
    """
    budget = recorded_budget(settings)
    return {seed: rendered_world(budget, seed) for seed in settings['world_seeds']}


def recorded_budget(settings: Dict[str, Any]) -> Budget:
    """Return the budget a results file's ``settings`` record."""
    recorded = settings['budget']
    return Budget(**{**recorded, 'image_size': tuple(recorded['image_size']),
                     'seeds': tuple(recorded['seeds'])})


def replay_again(source_path: Path, out: Optional[Path], machine, notes: List[str]) -> int:
    """Replay the bundles of an earlier run with today's code; write its figures anew."""
    source = json.loads(source_path.read_text())
    settings, runs = source['settings'], source['results']['runs']
    node_parameters = settings.get('node_parameters', {})
    worlds = recorded_worlds(settings)
    for run in runs:
        print(f"world {run['world_seed']} seed {run['seed']}: replaying", flush=True)
        scales = run['crossfit'].get('scales') or {'': run['crossfit']}
        run['replays'] = {scale: replay(exported['bundle'], worlds[run['world_seed']],
                                        settings['device'], node_parameters)
                          for scale, exported in scales.items()}
        run['replay'] = next(iter(run['replays'].values()))
    commit = source['provenance']['git']['commit']
    settings = {**settings, 'replayed_from': {'file': source_path.name, 'commit': commit}}
    summary = {str(world): goals(runs, world) for world in settings['world_seeds']}
    notes = notes + [f'replays only: the models were trained, exported and evaluated by the run '
                     f'of {source_path.name} (commit {str(commit)[:7]}); its replays were run '
                     'again with this commit\'s bag evaluator and fusion'] + [
        note for note in source.get('notes', []) if note.startswith('partial')]
    path = write_results(out or source_path, NAME, source['mode'], machine, settings=settings,
                         results={'goals': summary, 'runs': runs,
                                  'runs_planned': source['results'].get('runs_planned')},
                         notes=notes)
    for world, verdicts in summary.items():
        print(f'world {world}: {verdicts}')
    print(f'\nwrote {path}')
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the benchmark; return the exit status."""
    args = parse_args(argv)
    mode, machine, notes = begin(args)
    if args.replay_from is not None:
        return replay_again(args.replay_from, args.out, machine, notes)
    budget = args.budget
    # The node's defaults, except in a smoke run: its one-epoch model is rarely confident of a
    # scene, and the replay must still run the fusion for the smoke test to check it.
    node_parameters: Dict[str, Any] = {}
    if mode == 'smoke':
        notes.append('smoke run: a handful of images and one epoch, min_scene_confidence 0 in '
                     'the replay; the figures mean nothing')
        node_parameters['min_scene_confidence'] = 0.0
    work = WORK_DIR / f'uncertainty_runs_{mode}'
    out_path = args.out or default_out(NAME, mode)
    settings = {'threads': args.threads, 'budget': budget, 'config': args.config,
                'world_seeds': args.world_seeds, 'recipes': args.splits,
                'covariance_scales': args.covariance_scales,
                'correlation_modes': CORRELATION_MODES, 'device': args.device,
                'coverage_tolerance_points': COVERAGE_TOLERANCE_POINTS,
                'jitter_goal': JITTER_GOAL, 'node_parameters': node_parameters}
    planned = len(args.world_seeds) * len(budget.seeds)
    runs: List[Dict[str, Any]] = []
    # Seeds outer, worlds inner, and the file rewritten after every run: a run stopped early
    # still leaves both worlds measured on the first seeds, and says how many runs it holds.
    for seed in budget.seeds:
        for world_seed in args.world_seeds:
            world = rendered_world(budget, world_seed)
            run: Dict[str, Any] = {'world_seed': world_seed, 'seed': seed}
            for recipe in args.recipes:
                print(f'world {world_seed} seed {seed}: training {recipe} '
                      f'({budget.epochs} epochs)', flush=True)
                folds = '' if args.folds is None or recipe != 'crossfit' else f'_k{args.folds}'
                run[recipe] = train_recipe(
                    recipe, args.splits[recipe], args.config, budget, seed, args.device, world,
                    work / f'world{world_seed}_{recipe}{folds}_seed{seed}',
                    work / f'feature_cache_world{world_seed}',
                    args.covariance_scales if recipe == 'crossfit'
                    else args.covariance_scales[:1])
                metrics = run[recipe]['metrics']
                print(f"  {run[recipe]['train_seconds']:.0f} s, average median "
                      f"{metrics['average_median_position_m']:.3f} m / "
                      f"{metrics['average_median_orientation_deg']:.2f} deg", flush=True)
            run['replays'] = {scale: replay(exported['bundle'], world, args.device,
                                            node_parameters)
                              for scale, exported in run['crossfit']['scales'].items()}
            run['replay'] = run['replays'][args.covariance_scales[0]]
            runs.append(run)
            summary = {str(world): goals(runs, world) for world in args.world_seeds}
            partial = ([] if len(runs) == planned else
                       [f'partial: {len(runs)} of {planned} (world, seed) runs done when this '
                        'file was written'])
            out = write_results(out_path, NAME, mode, machine, settings=settings,
                                results={'goals': summary, 'runs': runs,
                                         'runs_planned': planned},
                                notes=notes + partial)
    for world, verdicts in summary.items():
        print(f'world {world}: {verdicts}')
    print(f'\nwrote {out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
