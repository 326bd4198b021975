"""What the int8 graph costs in accuracy on trained models (issue 27), float vs int8 per scene.

For each rendered world (``--world-seeds``: 0, the world the recipes were tuned on, and 1,
generated at benchmark time, which nothing was tuned on; the worlds of ``camera.py``), the
shipped ``synth_demo`` recipe is trained as shipped (``mspr-train``: the deployed model on every
walk plus the cross-fitting fold runs), then exported twice from the same checkpoint with the
same calibration: the float bundle (torch fp32, what ``mspr-export`` writes by default) and the
int8 bundle (``--onnx --quantize int8``: the static QDQ graph, calibrated on training images).
Both are evaluated on the test walks (other light than training) by ``mspr-evaluate``'s
``evaluate_bundle``: median position and orientation error per scene, scene accuracy and the
2-sigma coverage of the bundle's covariance.

The covariance is **not refitted** for int8: the bundle's covariance is fitted on the fold runs'
out-of-fold errors, which the int8 graph does not change, and a robot running the int8 graph
gets that covariance; the coverage column shows whether it still holds.

Goal of issue 27, per world: the int8 median errors within 5 % of the float ones (average of the
scene medians) and coverage within 5 points.

Sizes: ``--smoke`` seconds (figures mean nothing), ``--quick`` 20 epochs, default the recipe's
30 epochs. Usage: ``python benchmarks/int8_accuracy.py [--quick | --smoke] [--world-seeds 0 1]``

``--models-from RESULTS.json`` skips the training: the runs an earlier results file of this
benchmark trained (same recipe, budget, worlds and seed) are exported and evaluated again with
this commit's export (e.g. another int8 calibration); the results name that file, its commit and
its training times.
"""
import argparse
import json
from pathlib import Path
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

from camera import overrides, parse_args as camera_arguments, rendered_world

from common import begin, default_out, WORK_DIR, write_results
from common.results import fresh_run_dir
from mspr_ros.bundle import load_bundle
from mspr_training.config import load_config
from mspr_training.evaluate import evaluate_bundle
from mspr_training.export import export_bundle
from mspr_training.plain_json import jsonable
from mspr_training.train import train

NAME = 'int8_accuracy'
ERROR_GOAL = 0.05
COVERAGE_GOAL_POINTS = 5.0
VARIANTS = ('float', 'int8')


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse the command line (``camera.py``'s: the same recipe, worlds and budgets)."""
    def models_from(parser: argparse.ArgumentParser) -> None:
        parser.add_argument('--models-from', type=Path, metavar='RESULTS_JSON',
                            help='evaluate the runs this earlier results file trained '
                                 'instead of training (module docstring)')
    return camera_arguments(argv, __doc__.split('\n')[0], models_from)


def earlier_runs(path: Path, settings: Dict[str, Any]) -> Dict[int, Dict[str, Any]]:
    """Return world seed -> {run_dir, train_seconds} of an earlier run with these settings.

    Raises:
        ValueError: the file is another benchmark's, or trained with other settings, or a run
            folder it names is gone.
    """
    source = json.loads(Path(path).read_text())
    if source.get('benchmark') != NAME:
        raise ValueError(f'{path} holds {source.get("benchmark")!r} results, not {NAME!r}')
    for key in ('budget', 'config', 'seed', 'overrides'):
        if source['settings'].get(key) != jsonable(settings[key]):
            raise ValueError(f'{path} trained with {key} {source["settings"].get(key)!r}, this '
                             f'run asks for {jsonable(settings[key])!r}')
    runs = {}
    for world in source['results']['worlds']:
        run_dir = Path(world['variants']['float']['bundle']).parent
        if not (run_dir / 'config.yaml').is_file():
            raise ValueError(f'{path}: the run folder {run_dir} of world {world["world_seed"]} '
                             'is gone')
        runs[world['world_seed']] = {'run_dir': run_dir, 'train_seconds': world['train_seconds'],
                                     'commit': source['provenance']['git']['commit']}
    return runs


def trained_run(cfg: Any, world: Path, run_dir: Path, shared_cache: Path) -> float:
    """Train the shipped recipe (deployed run and fold runs); return the seconds it took."""
    fresh_run_dir(run_dir, shared_cache)
    started = time.perf_counter()
    train(cfg, run_dir, str(world / 'cambridge'))
    return time.perf_counter() - started


def evaluate(cfg: Any, run_dir: Path, world: Path, device: str) -> Dict[str, Any]:
    """Export the float and int8 bundles of one run and evaluate both on the test walks."""
    root = world / 'cambridge'
    figures = {}
    for variant in VARIANTS:
        options = {'onnx': True, 'quantize': 'int8'} if variant == 'int8' else {}
        path, _ = export_bundle(run_dir, run_dir / f'{variant}.safetensors', data_root=root,
                                device=device, **options)
        evaluation = evaluate_bundle(path, cfg.data, cfg.data.test_split,
                                     run_dir / f'eval_{variant}', data_root=root,
                                     device=device, batch_size=1,
                                     thresholds=cfg.validation.recall_thresholds)
        report = evaluation.report
        figures[variant] = {
            'bundle': str(path), 'metrics': report.to_dict(),
            'coverage': evaluation.coverage.to_dict(),
            'inference': load_bundle(path).inference}
    return figures


def goal(figures: Dict[str, Any]) -> Dict[str, Any]:
    """Return the relative change of the average medians and the coverage change, judged."""
    change = {}
    for key in ('average_median_position_m', 'average_median_orientation_deg'):
        reference = figures['float']['metrics'][key]
        change[key] = (figures['int8']['metrics'][key] - reference) / reference
    coverage = {}
    for block in ('position', 'rotation'):
        values = [100.0 * figures[v]['coverage'][block]['inside'][2] for v in VARIANTS]
        coverage[block] = values[1] - values[0]
    met = (all(abs(v) <= ERROR_GOAL for v in change.values())
           and all(abs(v) <= COVERAGE_GOAL_POINTS for v in coverage.values()))
    return {'relative_change': change, 'coverage_change_points': coverage,
            'error_goal': ERROR_GOAL, 'coverage_goal_points': COVERAGE_GOAL_POINTS, 'met': met}


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the benchmark; return the exit status."""
    args = parse_args(argv)
    mode, machine, notes = begin(args)
    budget = args.budget
    if mode == 'smoke':
        notes.append('smoke run: a handful of images and one epoch; the figures mean nothing')
    out_path = args.out or default_out(NAME, mode)
    settings = {'threads': args.threads, 'budget': budget, 'config': args.config,
                'world_seeds': args.world_seeds, 'seed': args.seed, 'device': args.device,
                'overrides': overrides(budget, args.seed, args.device),
                'covariance': 'not refitted for int8 (module docstring)',
                'error_goal': ERROR_GOAL, 'coverage_goal_points': COVERAGE_GOAL_POINTS}
    earlier = {} if args.models_from is None else earlier_runs(args.models_from, settings)
    if args.models_from is not None:
        missing = sorted(set(args.world_seeds) - set(earlier))
        if missing:
            raise SystemExit(f'{args.models_from} trained no model for world(s) {missing}')
        commit = str(next(iter(earlier.values()))['commit'])
        settings['models_from'] = {'file': args.models_from.name, 'commit': commit}
        notes.append(f'models trained by the run of {args.models_from.name} (commit '
                     f'{commit[:7]}; training times are that run\'s), exported and evaluated '
                     'again with this commit')
    worlds: List[Dict[str, Any]] = []
    for world_seed in args.world_seeds:
        world = rendered_world(budget, world_seed)
        cfg = load_config(args.config, overrides(budget, args.seed, args.device))
        work = WORK_DIR / f'int8_runs_{mode}'
        if world_seed in earlier:
            run_dir, seconds = (earlier[world_seed]['run_dir'],
                                earlier[world_seed]['train_seconds'])
        else:
            run_dir = work / f'world{world_seed}_seed{args.seed}'
            seconds = trained_run(cfg, world, run_dir, work / f'feature_cache_world{world_seed}')
        figures = evaluate(cfg, run_dir, world, args.device)
        record = {'world_seed': world_seed, 'seed': args.seed, 'train_seconds': seconds,
                  'variants': figures, 'goal': goal(figures)}
        worlds.append(record)
        change = record['goal']['relative_change']
        print(f"world {world_seed}: int8 vs float median position "
              f"{100 * change['average_median_position_m']:+.1f} %, orientation "
              f"{100 * change['average_median_orientation_deg']:+.1f} %, coverage "
              f"{record['goal']['coverage_change_points']}", flush=True)
        partial = ([] if len(worlds) == len(args.world_seeds) else
                   [f'partial: {len(worlds)} of {len(args.world_seeds)} worlds done'])
        out = write_results(out_path, NAME, mode, machine, settings=settings,
                            results={'worlds': worlds}, notes=notes + partial)
    print(f'\nwrote {out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
