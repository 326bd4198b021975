"""Do position and rotation errors decorrelate alike? The cross-fitted bundles' out-of-fold errors.

``mspr-export`` fits an error-correlation model per scene to the whole 6-D error (position and
rotation whitened together) and one to each block alone; this measured why the second exists.
The fit's summary in the bundle holds each block's own empirical correlation per distance bin
(``block_bins``, ``mspr_training.correlation_fit``). This exports the cross-fitted runs of an
``uncertainty.py`` results file again (``--from``; their run folders, with the fold runs, must
still be in the work folder; no training) with the first covariance scale that run used, and
tabulates, per world and distance between the two frames of a pair (pooled over training seeds
and scenes, weighted by pairs): the empirical correlation of the joint errors, the fitted
model's (the joint one), and each block's alone. It measures what one joint model misses; it
chooses nothing.

Usage: ``python benchmarks/correlation_blocks.py --from benchmarks/results/uncertainty.scale.json``
"""
import argparse
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from uncertainty import load_source

from common import add_common_arguments, begin, default_out, write_results
from mspr_ros.bundle import load_bundle
from mspr_training.calibration import SCALE_CONFORMAL
from mspr_training.export import export_bundle

NAME = 'correlation_blocks'


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    add_common_arguments(parser)
    parser.add_argument('--from', dest='source', type=Path, required=True,
                        metavar='RESULTS_JSON', help='the uncertainty.py run whose cross-fitted '
                        'runs to export again')
    return parser.parse_args(argv)


def scene_bins(summary: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Return one scene's distance bins: pairs, joint empirical and model, each block's."""
    blocks = {name: {row['from']: row for row in bins['distance_m']}
              for name, bins in summary['block_bins'].items()}
    return [{'from': row['from'], 'to': row['to'], 'pairs': row['pairs'],
             'joint': row['empirical'], 'model': row['model'],
             **{name: rows[row['from']]['empirical'] for name, rows in blocks.items()}}
            for row in summary['bins']['distance_m']]


def pooled(runs: List[Dict[str, Any]]) -> Dict[str, List[Dict[str, Any]]]:
    """Return, per world, each distance bin's pair-weighted means over seeds and scenes."""
    worlds: Dict[str, Dict[float, Dict[str, Any]]] = {}
    for run in runs:
        bins = worlds.setdefault(str(run['world_seed']), {})
        for rows in run['scenes'].values():
            for row in rows:
                total = bins.setdefault(row['from'], {'from': row['from'], 'to': row['to'],
                                                      'pairs': 0, 'joint': 0.0, 'model': 0.0,
                                                      'position': 0.0, 'rotation': 0.0})
                total['pairs'] += row['pairs']
                for key in ('joint', 'model', 'position', 'rotation'):
                    total[key] += row[key] * row['pairs']
    result = {}
    for world, bins in worlds.items():
        result[world] = []
        for low in sorted(bins):
            total = bins[low]
            result[world].append({**total, **{key: total[key] / total['pairs'] for key in (
                'joint', 'model', 'position', 'rotation')}})
    return result


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Export the runs again and tabulate; return the exit status."""
    args = parse_args(argv)
    mode, machine, notes = begin(args)
    # The runs' datasets are rendered again if the work folder lost them.
    source, record, _ = load_source(args.source)
    settings = source['settings']
    runs = []
    for run in source['results']['runs']:
        crossfit = run['crossfit']
        run_dir = Path(crossfit['bundle']).parent
        scale = next(iter(crossfit.get('scales') or {SCALE_CONFORMAL: None}))
        out = run_dir / f'model.blocks.{scale}.safetensors'
        print(f"world {run['world_seed']} seed {run['seed']}: exporting {run_dir}", flush=True)
        export_bundle(run_dir, out, calibration_split='crossfit', device=settings['device'],
                      covariance_scale=scale)
        fits = load_bundle(out).provenance['calibration']['error_correlation']
        scenes = {scene: scene_bins(fit) for scene, fit in fits.items() if fit is not None}
        for scene, rows in scenes.items():
            print(f'  {scene}: ' + ', '.join(
                f"{row['from']:g} m joint {row['joint']:.2f} pos {row['position']:.2f} "
                f"rot {row['rotation']:.2f}" for row in rows[:4]), flush=True)
        runs.append({'world_seed': run['world_seed'], 'seed': run['seed'], 'bundle': str(out),
                     'covariance_scale': scale,
                     'models': {scene: fit['model'] for scene, fit in fits.items() if fit},
                     'scenes': scenes})
    out = args.out or default_out(NAME, mode)
    document_settings = {
        'threads': args.threads, 'world_seeds': settings['world_seeds'],
        'source': record}
    path = write_results(out, NAME, mode, machine, settings=document_settings,
                         results={'runs': runs, 'pooled': pooled(runs)}, notes=notes)
    print(f'\nwrote {path}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
