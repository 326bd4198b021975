"""Per frame vs fused on trained models' recordings as the fusion window's distance changes.

Issue 25's fused goals (jitter at most 0.2 of per-frame, p95 not above per-frame) depend on how
many of the recent frames the window holds. It holds the frames of the last
``fusion.window_distance_m`` metres of odometry (and ``window_s`` seconds, ``max_samples``
frames). The rendered recordings move about 0.5 m between frames, so a 5 m window holds ten
frames, while the error correlation ``mspr-export`` fits along the calibration walks decays over
4-20 m: such a window holds about one view's error, and the fused estimate follows each frame.

This replays the cross-fitted bundles an ``uncertainty.py`` run exported (``--from``; they must
still be in the work folder) on both worlds' recordings, once per window distance
(``--distances``), with each bundle's learned error correlation and the node's other defaults:
the localizer runs once per bundle, the node's pose stream (frame processor, gates, fusion) once
per distance, as ``mspr-bag-eval``'s offline replay does. Per world, distance and training seed:
the fused / per-frame jitter and p95 ratios, the fused median position and the fused 2-sigma
coverage; per world and distance the worst ratios over seeds, with the goals.

The default (``FusionConfig.window_distance_m``, recorded in the results) was chosen on world 0
(seed 0, the world the recipes were tuned on); world 1 is generated from another seed and
nothing is chosen on it.

Usage: ``python benchmarks/fusion_window.py --from benchmarks/results/uncertainty.scale.json
[--distances 5 10 15 20]``
"""
import argparse
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from uncertainty import JITTER_GOAL, load_source

from common import add_common_arguments, begin, default_out, write_results
from mspr_ros.bundle import load_bundle
from mspr_ros.estimation.fusion import FusionConfig
from mspr_ros.localizer import Localizer
from mspr_training.bags.fusion_replay import fused_block
from mspr_training.bags.offline import (evaluate_offline, GroundTruthSpec, load_ground_truth,
                                        NODE_DEFAULTS, read_bag_transforms, scene_alignments)

NAME = 'fusion_window'
DEFAULT_DISTANCES = (5.0, 10.0, 15.0, 20.0)
RATIOS = ('jitter_position_m', 'jitter_orientation_deg', 'p95_position', 'p95_orientation')


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    add_common_arguments(parser)
    parser.add_argument('--from', dest='source', type=Path, required=True,
                        metavar='RESULTS_JSON', help='the uncertainty.py run whose bundles to '
                        'replay')
    parser.add_argument('--distances', type=float, nargs='+', default=list(DEFAULT_DISTANCES),
                        help='fusion.window_distance_m values (m)')
    return parser.parse_args(argv)


def row(fusion: Dict[str, Any]) -> Dict[str, Any]:
    """Return what the tables show of one replay's per-frame vs fused block."""
    fused = fusion['fused']
    return {'ratios': {key: fusion['ratios_fused_over_per_frame'][key] for key in RATIOS},
            'fused_median_position_m': fused['position_m']['median'],
            'per_frame_median_position_m': fusion['per_frame']['position_m']['median'],
            'fused_coverage_2sigma': fused['coverage_2sigma'],
            'window': fusion['config']['window_distance_m']}


def sweep(bundle_path: str, world: Path, parameters: Dict[str, Any],
          distances: Sequence[float]) -> Dict[str, Any]:
    """Return the row of each window distance for one bundle on one world's recording."""
    localizer = Localizer(load_bundle(bundle_path), device='cpu')
    bag = world / 'bag'
    parameters = {**NODE_DEFAULTS, **parameters, 'fusion.error_correlation': 'bundle'}
    evaluation = evaluate_offline(bag, localizer, parameters=parameters)
    # The localizer's answers are the same whatever the window: only the pose stream is run
    # again, as evaluate_offline runs it (its ground truth, transforms and alignments).
    ground_truth = load_ground_truth(bag, GroundTruthSpec())
    transforms = read_bag_transforms(bag)
    alignments = scene_alignments(localizer, None)
    rows = {}
    for distance in distances:
        fusion, notes = fused_block(
            evaluation.frames, ground_truth, transforms, localizer, alignments,
            {**parameters, 'fusion.window_distance_m': distance},
            evaluation.compared_frame)
        if fusion is None:
            raise RuntimeError(f'{bundle_path}: no fused replay at {distance} m: {notes}')
        rows[f'{distance:g}'] = row(fusion)
    return rows


def worst(runs: List[Dict[str, Any]], distances: Sequence[float]) -> Dict[str, Any]:
    """Return, per world and distance, the worst ratios over seeds and the goals' verdicts."""
    summary: Dict[str, Any] = {}
    for world in sorted({run['world_seed'] for run in runs}):
        mine = [run for run in runs if run['world_seed'] == world]
        summary[str(world)] = {}
        for distance in distances:
            rows = [run['by_distance'][f'{distance:g}'] for run in mine]
            jitter = max(max(r['ratios']['jitter_position_m'],
                             r['ratios']['jitter_orientation_deg']) for r in rows)
            p95 = max(max(r['ratios']['p95_position'], r['ratios']['p95_orientation'])
                      for r in rows)
            summary[str(world)][f'{distance:g}'] = {
                'jitter_worst_ratio': jitter, 'jitter_met': jitter <= JITTER_GOAL,
                'p95_worst_ratio': p95, 'p95_met': p95 <= 1.0,
                'fused_median_position_m': [r['fused_median_position_m'] for r in rows]}
    return summary


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the sweep; return the exit status."""
    args = parse_args(argv)
    mode, machine, notes = begin(args)
    source, record, worlds = load_source(args.source)
    settings = source['settings']
    node_parameters = settings.get('node_parameters', {})
    runs = []
    for run in source['results']['runs']:
        bundle = run['crossfit']['bundle']      # the first covariance scale's: the goals'
        print(f"world {run['world_seed']} seed {run['seed']}: {bundle}", flush=True)
        by_distance = sweep(bundle, worlds[run['world_seed']], node_parameters, args.distances)
        for distance, got in by_distance.items():
            ratios = got['ratios']
            print(f'  {distance:>5} m: jitter {ratios["jitter_position_m"]:.3f} / '
                  f'{ratios["jitter_orientation_deg"]:.3f}, p95 {ratios["p95_position"]:.3f} / '
                  f'{ratios["p95_orientation"]:.3f}, fused median '
                  f'{got["fused_median_position_m"]:.2f} m', flush=True)
        runs.append({'world_seed': run['world_seed'], 'seed': run['seed'], 'bundle': bundle,
                     'by_distance': by_distance})
    out = args.out or default_out(NAME, mode)
    document_settings = {
        'threads': args.threads, 'distances_m': args.distances,
        'default_distance_m': FusionConfig().window_distance_m,
        'chosen_on_world': 0, 'correlation': 'bundle', 'node_parameters': node_parameters,
        'jitter_goal': JITTER_GOAL,
        'source': record}
    path = write_results(out, NAME, mode, machine, settings=document_settings,
                         results={'runs': runs, 'worst': worst(runs, args.distances)},
                         notes=notes)
    print(f'\nwrote {path}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
