"""Render the figures of benchmarks/README.md and README.md from the results files (make figures).

Every table of measured figures in those two files sits between ``<!-- figures:NAME -->`` and
``<!-- /figures:NAME -->`` and is made here from the committed ``benchmarks/results/*.json``
(``common.tables_speed``, ``common.tables_training``, ``common.tables_uncertainty``,
``common.tables_calibration``, ``common.tables_camera``), each with a caption naming the file, the
commit of its run, its date and mode, and "dirty tree" when the checkout had uncommitted changes.
``NOTES`` adds what a file cannot say about itself (a stamp older than the code it ran, a run older
than the code it describes); a note belongs to one file at one commit, so a rerun drops it. Prose
outside the blocks quotes no measured number.

``python benchmarks/figures.py`` rewrites the blocks; ``--check`` changes nothing and exits 1
(printing a diff) when a block differs from what the results files give: a hand-edited number
or a results file committed without ``make figures`` (``test/test_figures.py`` runs it).
"""
import argparse
import difflib
from pathlib import Path
import sys
from typing import Callable, Dict, List, Optional, Sequence

from common import (tables_calibration, tables_camera, tables_speed, tables_training,
                    tables_uncertainty)
from common.markdown import cpu_text, load_source, missing, num, render_blocks
from common.markdown import RESULTS_DIR, Source, table, tree_state

REPO = Path(__file__).resolve().parents[1]
TARGETS = (REPO / 'benchmarks' / 'README.md', REPO / 'README.md')
# Where the results files are read from (``--results-dir``; tests point it elsewhere).
results_dir = RESULTS_DIR

_STALE_NODE = ('Stale: measured on {date} at {commit}, before the node fused every frame '
               '(`fusion: window`, the default since 6b93ebf) and before its `tf` and '
               '`pose_stream` stages were timed{what}. Refresh on an idle machine: `{command}`.')
_MOMENT_SCALE = (
    "Measured before the conformal covariance scale: each covariance block then had the second "
    "moment's size (`mspr-export --covariance-scale moment`), so its coverage figures are that "
    "scale's; `uncertainty.scale.json` below measures both scales side by side on the same "
    'trained models. Its jitter also counted the pairs of frames across the pause between two '
    'walks of the recording, where the estimate relocalizes (no longer counted), and its fusion '
    'window held 5 m of odometry, the default until dfec3c4 (15 m since). Its accuracy and '
    'training-time figures stand.')
_BEFORE_ROTATION_DRIFT = (
    'Its replays ran the fusion before 6ea954e: odometry drift then added 0.02 rad of '
    'orientation variance per metre travelled, the position figure (0.01 rad/m since, '
    '`fusion.odometry_rotation_drift_per_m`), and the gate did not count how much the '
    "window's samples scatter; its fused figures are that fusion's.")
# (results file, full commit of its run) -> what the file cannot say about itself.
NOTES = {
    ('accuracy.json', 'a14a6418c7723c23c395b6e134c3ea4379ed6bf9'): (
        'This run is stamped with commit a14a641, which is older than the code it ran: it used '
        'the covariance shrinkage toward isotropic (OAS) of b709b75, then uncommitted (committed '
        'a minute after the run started), and the file predates the record of a dirty tree. '
        'Its covariance coverage was calibrated on a held-out training walk per scene, which '
        'the models did not train on (cross-fitting is the default since issue 25: '
        '`uncertainty.py` measures what that changes). A '
        'rerun on a clean tree takes about 4 hours on 2 cores '
        '(`python benchmarks/accuracy.py --world-seeds 0 1`).'),
    ('demo.json', '43e4f843b5afc40115f3252cf00245d3641021be'): (
        'Measured before issue 25: its model did not train on the held-out walk of each scene, '
        'which calibrated the covariance; `make demo` now trains on every walk and calibrates '
        'by cross-fitting (refresh: `make demo`).'),
    ('uncertainty.json', '6c0987d6605d1d4213a80886864112d07ed63cce'): (
        _MOMENT_SCALE + ' ' + _BEFORE_ROTATION_DRIFT),
    ('uncertainty.folds6.json', '825d777497811a0123a1b401dd94ad6b15718472'): (
        _MOMENT_SCALE),
    ('uncertainty.folds3.json', '8a35aa04f996b2cc280cbbca39226ea2108b874a'): (
        _BEFORE_ROTATION_DRIFT),
    ('uncertainty.folds6.json', '23d721617fbb891afa34b13f04588a10e8a81177'): (
        'Its training times are not the recipe\'s: the run shared the 2 cores with another '
        'benchmark for its first 20 minutes and was paused for 17 more to let that one finish. '
        'The extra training time of 6 folds is that of the run at 825d777 (5.1 times the '
        'deployed run\'s, in the history of this file). Its replays ran the fusion window of 5 m '
        'of odometry, the default until dfec3c4 (15 m since). ' + _BEFORE_ROTATION_DRIFT),
    ('stream.json', '43e4f843b5afc40115f3252cf00245d3641021be'): (
        'Measured with the fusion window of 5 m of odometry, the default until dfec3c4 (15 m '
        'since, fusion_window.py). The window holds at most 30 frames (max_samples) either way.'),
    ('latency.json', '664483cf297ca9b0149af23e643cb07fbdff7d60'): _STALE_NODE.format(
        date='2026-11-26', commit='664483c',
        what=", so this run has no fusion-on / fusion-off pair",
        command='python benchmarks/latency.py'),
    ('stream.json', '664483cf297ca9b0149af23e643cb07fbdff7d60'): _STALE_NODE.format(
        date='2026-11-26', commit='664483c', what='',
        command='python benchmarks/stream.py'),
    ('throughput.json', '4995affa2d6bb39ce44e840fecbe54424fbd2c7d'): (
        "Stale: measured on 2026-11-26 at 4995aff, before issue 18 changed mspr-train's step "
        '(allocator tuning, chunked attention: 7873719; tcmalloc: e01ae9e), so its step time is '
        'not today\'s (train_speed.py below measures today\'s step). Refresh on an idle machine: '
        '`python benchmarks/throughput.py`.'),
}


def source(*names: str) -> Optional[Source]:
    """Return the first of the results files ``names`` that exists, with its note."""
    for name in names:
        found = load_source(name, NOTES, results_dir)
        if found is not None:
            return found
    return None


def from_file(names: Sequence[str], command: str,
              render: Callable[[Source], str]) -> Callable[[], str]:
    """Return a renderer of the first existing file of ``names`` (a placeholder without one)."""
    def block() -> str:
        found = source(*names)
        return render(found) if found is not None else missing(names[0], command)
    return block


def from_files(names: Sequence[str], command: str,
               render: Callable[[List[Source]], str]) -> Callable[[], str]:
    """Return a renderer of every existing file of ``names`` (the first one is required)."""
    def block() -> str:
        found = [s for s in (source(name) for name in names) if s is not None]
        if not found or found[0].name != names[0]:
            return missing(names[0], command)
        return render(found)
    return block


def sources_table() -> str:
    """Every committed results file: what ran, where, when, at which commit, tree state, load."""
    rows = []
    for path in sorted(results_dir.glob('*.json')):
        found = source(path.name)
        document = found.document
        machine = document.get('machine', {})
        load_start = (machine.get('load_average_start') or [None])[0]
        load_end = (document.get('load_average_end') or [None])[0]
        duration = found.provenance.get('duration_s')
        rows.append([f'`{path.name}`', document.get('mode', '?'), found.date,
                     f'`{found.commit[:7]}`', tree_state(found.dirty) + (' (note)' if found.note
                                                                         else ''),
                     f"{cpu_text(machine)}, {machine.get('usable_cores', '?')} cores, "
                     f"{machine.get('cuda_device') or 'no GPU'}",
                     machine.get('torch_version', '?'), found.settings.get('threads', '?'),
                     f'{num(load_start, 2)} -> {num(load_end, 2)}',
                     num(duration / 60, 1, ' min') if duration is not None else 'not recorded'])
    return table(['results file', 'mode', 'date', 'commit', 'tree', 'machine', 'torch',
                  'threads', 'load start -> end', 'run time'], rows)


def renderers() -> Dict[str, Callable[[], str]]:
    """Return the renderer of every block name."""
    speed, training = tables_speed, tables_training
    accuracy = ('accuracy.json',)
    accuracy_command = 'python benchmarks/accuracy.py --world-seeds 0 1'
    train = ('train_speed.json',)
    train_command = ('python benchmarks/train_speed.py --variants '
                     'baseline,allocator,chunked,tcmalloc,ms_depth_4x4')
    return {
        'sources': sources_table,
        'accuracy-settings': from_file(accuracy, accuracy_command, training.accuracy_settings),
        'accuracy-errors': from_file(accuracy, accuracy_command, training.accuracy_errors),
        'accuracy-coverage': from_file(accuracy, accuracy_command, training.accuracy_coverage),
        'accuracy-goals': from_file(accuracy, accuracy_command, training.accuracy_goals),
        'accuracy-attention': from_file(accuracy, accuracy_command,
                                        training.accuracy_attention),
        'latency': from_file(('latency.json',), 'python benchmarks/latency.py', speed.latency),
        'model-speed': from_file(('model_speed.json', 'model_speed.quick.json'),
                                 'python benchmarks/model_speed.py', speed.model_speed),
        'stream': from_files(('stream.json', 'stream.fusion_none.json'),
                             'python benchmarks/stream.py', speed.stream),
        'throughput': from_file(('throughput.json',), 'python benchmarks/throughput.py',
                                speed.throughput),
        'fusion': from_file(('fusion.json',), 'python benchmarks/fusion.py --compare-gtsam 20',
                            tables_uncertainty.fusion),
        'uncertainty': from_file(('uncertainty.json', 'uncertainty.quick.json'),
                                 'python benchmarks/uncertainty.py --quick --seeds 0 1 2',
                                 tables_uncertainty.uncertainty),
        'uncertainty-scale': from_file(
            ('uncertainty.scale.json',),
            'python benchmarks/uncertainty.py --quick --seeds 0 1 2 --crossfit-only '
            '--out benchmarks/results/uncertainty.scale.json',
            tables_uncertainty.uncertainty),
        'uncertainty-folds': from_file(
            ('uncertainty.folds6.json',),
            'python benchmarks/uncertainty.py --quick --seeds 0 --world-seeds 1 --folds 6 '
            '--crossfit-only --out benchmarks/results/uncertainty.folds6.json',
            tables_uncertainty.uncertainty),
        'uncertainty-folds3': from_file(
            ('uncertainty.folds3.json',),
            'python benchmarks/uncertainty.py --quick --seeds 0 --world-seeds 0 1 --folds 3 '
            '--crossfit-only --covariance-scales conformal '
            '--out benchmarks/results/uncertainty.folds3.json',
            tables_uncertainty.uncertainty),
        'fusion-window': from_file(
            ('fusion_window.json',),
            'python benchmarks/fusion_window.py --from benchmarks/results/uncertainty.scale.json '
            '--distances 5 8 10 12 15 20',
            tables_calibration.fusion_window),
        'correlation-blocks': from_file(
            ('correlation_blocks.json',),
            'python benchmarks/correlation_blocks.py '
            '--from benchmarks/results/uncertainty.scale.json',
            tables_calibration.correlation_blocks),
        'site-calibration': from_file(
            ('site_calibration.json',),
            'python benchmarks/site_calibration.py '
            '--from benchmarks/results/uncertainty.scale.json',
            tables_calibration.site_calibration),
        'camera': from_file(('camera.json', 'camera.quick.json'),
                            'python benchmarks/camera.py --world-seeds 0 1',
                            tables_camera.camera),
        'train-speed-paper': from_file(train, train_command,
                                       lambda s: training.train_speed(s, 'paper')),
        'train-speed-demo': from_file(train, train_command,
                                      lambda s: training.train_speed(s, 'demo')),
        'train-speed-goals': from_file(train, train_command, training.train_speed_goals),
        'onnx-latency': from_files(('onnx_latency.json', 'onnx_latency.quick.json'),
                                   'python benchmarks/onnx_latency.py', speed.onnx_latency),
        'int8-accuracy': from_file(('int8_accuracy.json', 'int8_accuracy.quick.json'),
                                   'python benchmarks/int8_accuracy.py --world-seeds 0 1',
                                   training.int8_accuracy),
        'int8-accuracy-minmax': from_file(
            ('int8_accuracy.minmax.json',),
            'python benchmarks/int8_accuracy.py --world-seeds 0 1',
            training.int8_accuracy),
        'torch-latency': from_file(('torch_latency.json', 'torch_latency.quick.json'),
                                   'python benchmarks/torch_latency.py', speed.torch_latency),
        'int8-latency': from_file(('int8_latency.json', 'int8_latency.quick.json'),
                                  'python benchmarks/int8_latency.py', speed.int8_latency),
        'int8-latency-avx2': from_file(
            ('int8_latency.avx2.json',),
            'python benchmarks/int8_latency.py --out benchmarks/results/int8_latency.avx2.json',
            speed.int8_latency),
        'gpu-latency': from_file(('gpu_latency.json', 'gpu_latency.quick.json'),
                                 'python benchmarks/gpu_latency.py', speed.gpu_latency),
        'feature-views': from_file(('feature_views.json',),
                                   'python benchmarks/feature_views.py --views 1 4 8',
                                   training.feature_views),
        'demo': from_file(('demo.json',), 'make demo', training.demo),
    }


def render(path: Path) -> str:
    """Return the text of ``path`` with its blocks rendered from the results files."""
    return render_blocks(path.read_text(encoding='utf-8'), renderers())


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Rewrite (or, with --check, compare) the rendered blocks; return the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--check', action='store_true',
                        help='change nothing; exit 1 with a diff when a block is not what the '
                             'results files give')
    parser.add_argument('--results-dir', type=Path, default=RESULTS_DIR,
                        help='folder of the results files (default benchmarks/results)')
    parser.add_argument('files', nargs='*', type=Path, default=list(TARGETS),
                        help='Markdown files (default: benchmarks/README.md and README.md)')
    args = parser.parse_args(argv)
    global results_dir
    results_dir = args.results_dir
    status = 0
    for path in args.files:
        current = path.read_text(encoding='utf-8')
        rendered = render(path)
        if rendered == current:
            print(f'{path}: up to date')
            continue
        if args.check:
            status = 1
            sys.stdout.writelines(difflib.unified_diff(
                current.splitlines(keepends=True), rendered.splitlines(keepends=True),
                f'{path} (as committed)', f'{path} (rendered from benchmarks/results)'))
            print(f'{path}: differs from the results files; run `make figures`')
        else:
            path.write_text(rendered, encoding='utf-8')
            print(f'{path}: rendered')
    return status


if __name__ == '__main__':
    sys.exit(main())
