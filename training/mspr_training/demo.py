"""``make demo``: the whole product on a rendered world, end to end, on a laptop CPU.

1. renders a small multi-scene world (``mspr-synth``): Cambridge-format training/test images and a
   rosbag2 recording of the test sequences (camera images, ground truth, odom and camera TF);
2. trains the small CPU configuration ``synth_demo`` (``mspr-train``, with a progress bar) on
   every training loop, then its two cross-fitting fold runs, each without half of the loops;
3. exports the weights bundle with per-scene covariance and error correlation calibrated on the
   fold runs' errors on the loops they left out (``mspr-export``);
4. evaluates it on the test images (``mspr-evaluate``) against the naive baseline (each scene's
   mean training position), with the covariance's coverage (1, 2, 3 sigma and NEES);
5. replays the recording through the real node over DDS with ``/clock`` (``mspr-bag-eval --live``)
   and prints the per-scene error table and the plot paths.

Every step caches its output under ``--out`` (default ``artifacts/demo``): a second run reuses the
rendered world, the finished training run and the bundle, and an interrupted training resumes from
its last checkpoint.

The figures it prints are also written as a results file (``--results``; default
``benchmarks/results/demo.json`` in a checkout of the repository, else ``<out>/results.json``)
with the run's provenance (commit, dirty tree, command line, versions, machine, load:
``mspr_training.provenance``); ``make figures`` renders the README's demo table from it.
"""
import argparse
import hashlib
import json
from pathlib import Path
import sys
import time

from mspr_ros.runtime.allocator import use_preferred_allocator
from mspr_ros.runtime.dds_profile import with_image_profile
from mspr_training import provenance
from mspr_training.plain_json import jsonable

DEFAULT_OUT = Path('artifacts') / 'demo'
CONFIG = 'synth_demo'
# The committed results file the README's demo table is rendered from (benchmarks/figures.py).
REPO_RESULTS = Path(__file__).resolve().parents[2] / 'benchmarks' / 'results'
# What the command line of a results file says for this program.
PROGRAM = 'python -m mspr_training.demo'


def _banner(step: int, text: str) -> None:
    print(f'\n=== [{step}/5] {text} ===', flush=True)


def _fingerprint(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _source_digest(*modules) -> str:
    """Return a digest of the source files of ``modules``."""
    return _fingerprint(*(Path(module.__file__).read_text(encoding='utf-8') for module in modules))


def _fresh(target: Path, stamp: Path, key: str) -> bool:
    """Return True when ``target`` exists and was made with the same inputs (``key``)."""
    return target.exists() and stamp.exists() and stamp.read_text().strip() == key


def parse_args(argv=None) -> argparse.Namespace:
    """Parse the demo's command line (all optional; ``make demo DEMO_ARGS=...``)."""
    parser = argparse.ArgumentParser(prog='mspr-demo', description=__doc__.split('\n')[0])
    parser.add_argument('--out', type=Path, default=DEFAULT_OUT, help='artifact folder')
    parser.add_argument('--scenes', type=int, default=3, help='scenes in the rendered world')
    parser.add_argument('--train-frames', type=int, default=300, help='train frames per scene')
    parser.add_argument('--test-frames', type=int, default=100, help='test frames per scene')
    parser.add_argument('--train-sequences', type=int, default=6,
                        help='training loops per scene (alternating direction, other offsets)')
    parser.add_argument('--size', default='320x240', help='rendered image size WIDTHxHEIGHT')
    parser.add_argument('--epochs', type=int, default=None, help='override the config epochs')
    parser.add_argument('--bag-rate', type=float, default=5.0,
                        help='camera rate of the recording, Hz (5: a walking pace)')
    parser.add_argument('--device', default='auto', help="'auto', 'cpu', 'cuda', 'cuda:N'")
    parser.add_argument('--skip-live', action='store_true',
                        help='stop after the offline evaluation (no DDS replay)')
    parser.add_argument('--seed', type=int, default=0, help='world seed')
    parser.add_argument('--results', type=Path, default=None,
                        help='results file of the run (default: benchmarks/results/demo.json in '
                             'a checkout of the repository, else <out>/results.json)')
    return parser.parse_args(argv)


def default_results(out: Path) -> Path:
    """Return where the results file goes when ``--results`` is not given."""
    return REPO_RESULTS / 'demo.json' if REPO_RESULTS.is_dir() else out / 'results.json'


def write_results(path: Path, machine: dict, settings: dict, results: dict, argv=None) -> Path:
    """Write the demo's results file (the layout of ``benchmarks/common/results.py``).

    ``machine`` is ``provenance.machine_facts()`` from the start of the run; ``argv`` the
    arguments ``main`` got (None: this process's command line).
    """
    command = None if argv is None else [PROGRAM, *argv]
    document = {'benchmark': 'demo', 'mode': 'full', 'machine': machine,
                'load_average_end': provenance.load_average(),
                'provenance': provenance.run_record(machine, command, PROGRAM),
                'settings': settings, 'results': results, 'notes': []}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(jsonable(document), indent=2, allow_nan=False) + '\n')
    return path


def report_figures(report, coverage) -> dict:
    """Return the evaluation's per-scene and average figures, and the covariance coverage."""
    return {
        'scenes': [{'scene': s.scene, 'images': s.images,
                    'median_position_m': s.median_position_m,
                    'median_orientation_deg': s.median_orientation_deg,
                    'scene_accuracy': s.scene_accuracy,
                    'naive_median_position_m': s.baseline_median_position_m}
                   for s in report.scenes],
        'average_median_position_m': report.average_median_position_m,
        'average_median_orientation_deg': report.average_median_orientation_deg,
        'scene_accuracy': report.scene_accuracy,
        'naive_average_median_position_m': report.baseline_average_median_position_m,
        'coverage': coverage.to_dict() if coverage is not None else None}


def live_figures(report_json: Path) -> dict:
    """Return frames answered / dropped and the latency of the live replay's report."""
    report = json.loads(report_json.read_text())
    counts, latency = report.get('counts') or {}, report.get('latency') or {}
    return {'images': counts.get('images'), 'answered': counts.get('answered'),
            'dropped': counts.get('dropped'), 'latency_kind': latency.get('kind'),
            'latency_median_ms': latency.get('median_ms'),
            'latency_p95_ms': latency.get('p95_ms')}


def main(argv=None) -> int:
    """Run the demo; return the exit status."""
    # The demo trains in this process (see mspr_ros.runtime.allocator); may restart it on tcmalloc.
    use_preferred_allocator(argv)
    args = parse_args(argv)
    machine = provenance.machine_facts()
    # Images cross Fast DDS quickly and without loss only through shared memory (see README).
    with_image_profile()
    from mspr_training import (calibration, correlation_fit, crossfit, evaluate, export, synth,
                               train)
    from mspr_training.bags import cli as bag_eval
    from mspr_training.config import load_config

    started = time.perf_counter()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    width, height = (int(v) for v in args.size.lower().split('x'))

    _banner(1, 'render a multi-scene world (mspr-synth)')
    world_dir = out / 'world'
    manifest = synth.generate(
        world_dir, formats=('cambridge', 'bag'), num_scenes=args.scenes,
        train_frames=args.train_frames, test_frames=args.test_frames, size=(width, height),
        train_sequences=args.train_sequences,
        seed=args.seed, bag_rate_hz=args.bag_rate, preview=True, progress=True)
    made_fresh = {'world': not manifest.cached}
    state = 'reused' if manifest.cached else f'rendered in {manifest.seconds:.0f} s'
    print(f'world {state}: {", ".join(f"{s} {c}" for s, c in manifest.counts.items())}')
    print(f'contact sheet: {world_dir / "preview.png"}')

    _banner(2, f'train the {CONFIG} configuration (mspr-train)')
    overrides = [f'device={args.device}', f'model.num_scenes={args.scenes}']
    if args.epochs is not None:
        overrides.append(f'schedule.epochs={args.epochs}')
    cfg = load_config(CONFIG, overrides)
    train_key = _fingerprint(manifest.parameters, cfg.to_dict())
    # One run folder per (world, config): changed settings train afresh, an interrupted run of
    # the same settings resumes from its last checkpoint.
    run_dir = out / f'run-{train_key}'
    train_stamp = run_dir / '.demo-trained'
    made_fresh['training'] = not _fresh(run_dir, train_stamp, train_key)
    if not made_fresh['training']:
        print(f'reusing the finished run in {run_dir}')
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        train.train(cfg, run_dir, str(world_dir / 'cambridge'), resume='auto')
        train_stamp.write_text(train_key + '\n')
    # What cross-fitting cost: the fold runs' wall-clock time against the deployed run's.
    training_time = crossfit.TrainingTime(run_dir).summary(cfg.data.calibration_folds)
    if training_time['extra_ratio'] is not None:
        print(f'training time: deployed run {training_time["main_s"]:.0f} s, fold runs '
              f'{training_time["extra_s"]:.0f} s ({training_time["extra_ratio"]:.2f} x)')

    _banner(3, 'export the weights bundle (mspr-export)')
    bundle = out / 'mspr_demo.safetensors'
    bundle_stamp = out / '.demo-bundle'
    # The exporter's code is part of the key: a new calibration must not reuse an old bundle.
    bundle_key = _fingerprint(train_key, _source_digest(export, calibration, crossfit,
                                                        correlation_fit))
    made_fresh['bundle'] = not _fresh(bundle, bundle_stamp, bundle_key)
    if not made_fresh['bundle']:
        print(f'reusing {bundle}')
    else:
        # The covariance and error correlation come from the config's data.calibration_split
        # (the cross-fitting runs' out-of-fold errors on the training loops), never from the
        # test images the demo reports on.
        export.export_bundle(run_dir, bundle, calibration_split='default',
                             data_root=world_dir / 'cambridge', device=args.device)
        bundle_stamp.write_text(bundle_key + '\n')
    print(f'bundle: {bundle}')

    _banner(4, 'evaluate on the test images (mspr-evaluate)')
    result = evaluate.evaluate_bundle(bundle, cfg.data, 'test', out / 'eval',
                                      data_root=world_dir / 'cambridge', device=args.device,
                                      thresholds=cfg.validation.recall_thresholds)
    report = result.report
    print(report.to_markdown())
    if result.coverage is not None:
        print(result.coverage.to_markdown())
    _print_targets(report)
    for name in ('error_cdf', 'trajectories'):
        print(f'plot: {result.files[name]}')
    settings = {'config': CONFIG, 'scenes': args.scenes, 'world_seed': args.seed,
                'train_frames': args.train_frames, 'test_frames': args.test_frames,
                'train_sequences': args.train_sequences, 'size': f'{width}x{height}',
                'epochs': cfg.schedule.epochs, 'bag_rate_hz': args.bag_rate,
                'device': args.device, 'backbone': cfg.model.backbone,
                'augmented_views': cfg.feature_cache.augmented_views,
                'covariance_calibration': {
                    'crossfit': f'out-of-fold errors of {cfg.data.calibration_folds} fold runs',
                    'calibration': 'held-out training loop per scene'}.get(
                        cfg.data.calibration_split, cfg.data.calibration_split),
                'covariance_shrinkage': calibration.SHRINKAGE_OAS,
                'covariance_scale': calibration.SCALE_CONFORMAL,
                'live_replay': not args.skip_live}
    figures = {**report_figures(report, result.coverage), 'made_fresh': made_fresh,
               'training_time': training_time}

    if args.skip_live:
        figures['seconds'] = time.perf_counter() - started
        path = write_results(args.results or default_results(out), machine, settings,
                             {**figures, 'live': None}, argv)
        print(f'\ndemo finished in {figures["seconds"]:.0f} s (live replay skipped); '
              f'results: {path}')
        return 0
    _banner(5, 'replay the recording through the node over DDS (mspr-bag-eval --live)')
    status = bag_eval.main([str(world_dir / 'bag'), '--weights', str(bundle), '--live',
                            '--device', args.device, '--out', str(out / 'live')])
    if status != 0:
        return status
    live_md = out / 'live' / 'report.md'
    if live_md.exists():
        print(live_md.read_text())
    for png in sorted((out / 'live').glob('*.png')):
        print(f'plot: {png}')
    figures['live'] = live_figures(out / 'live' / 'report.json')
    figures['seconds'] = time.perf_counter() - started
    path = write_results(args.results or default_results(out), machine, settings, figures, argv)
    print(f'\ndemo finished in {figures["seconds"]:.0f} s; artifacts in {out}; results: {path}')
    return 0


def _print_targets(report) -> None:
    """Print the demo's two accuracy targets with the measured numbers (not asserted)."""
    accuracy = report.scene_accuracy
    ours = report.average_median_position_m
    naive = report.baseline_average_median_position_m
    if accuracy is not None:
        verdict = 'met' if accuracy > 0.95 else 'NOT met'
        print(f'scene classification accuracy: {100 * accuracy:.1f} % (target > 95 %: {verdict})')
    if ours is not None and naive:
        verdict = 'met' if ours < naive / 3 else 'NOT met'
        print(f'median position error: {ours:.3f} m vs naive baseline {naive:.3f} m '
              f'(ratio {ours / naive:.2f}; target < 0.33: {verdict})')


if __name__ == '__main__':
    sys.exit(main())
