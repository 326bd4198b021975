"""The published figures are rendered from the committed results files, and say where from.

``benchmarks/figures.py`` (``make figures``) renders every table of ``benchmarks/README.md`` and
the README's demo figures between markers. These tests fail when the Markdown differs from what
the results files give (a hand-edited number, a results file committed without ``make
figures``), check that captions mark a dirty tree and a known caveat, that statistics are the
ones the labels name, and that the provenance record of a results file is what it says.
"""
import copy
import json
from pathlib import Path
import shutil
import subprocess
import sys
import types

import pytest

from mspr_training import demo, provenance

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / 'benchmarks'
RESULTS = BENCHMARKS / 'results'
TARGETS = (BENCHMARKS / 'README.md', REPO / 'README.md')


@pytest.fixture(scope='module')
def figures(benchmarks_on_path):
    """Return benchmarks/figures.py as a module."""
    import figures as module
    return module


@pytest.fixture
def results_copy(figures, tmp_path, monkeypatch):
    """Point the renderer at a copy of the committed results; return the copy's folder."""
    folder = tmp_path / 'results'
    shutil.copytree(RESULTS, folder)
    monkeypatch.setattr(figures, 'results_dir', folder)
    return folder


def run_check(*args: str) -> subprocess.CompletedProcess:
    """Run ``benchmarks/figures.py --check`` as ``make figures FIGURES_ARGS=--check`` does."""
    return subprocess.run([sys.executable, str(BENCHMARKS / 'figures.py'), '--check', *args],
                          cwd=REPO, capture_output=True, text=True, timeout=120, check=False)


def test_the_markdown_is_what_the_committed_results_give():
    # make figures on a clean checkout changes nothing: every block is already rendered.
    result = run_check()
    assert result.returncode == 0, (
        'a rendered table differs from benchmarks/results (hand-edited, or results committed '
        f'without `make figures`):\n{result.stdout[-6000:]}{result.stderr[-3000:]}')


def test_every_target_has_blocks_and_rendering_is_idempotent(figures):
    markdown = sys.modules['common.markdown']
    for path in TARGETS:
        assert markdown.blocks(path.read_text(encoding='utf-8')), f'{path} has no block'
        once = figures.render(path)
        assert figures.render_blocks(once, figures.renderers()) == once
    assert 'demo' in markdown.blocks(TARGETS[1].read_text(encoding='utf-8'))


def test_a_hand_edited_number_fails_the_check(tmp_path):
    text = TARGETS[0].read_text(encoding='utf-8')
    start = text.index('<!-- figures:train-speed-paper -->')
    row = text.index('| baseline |', start)
    cell = text.index(' s |', row)  # the baseline's median step, e.g. "5.731 s"
    edited = text[:cell - 1] + ('0' if text[cell - 1] != '0' else '1') + text[cell:]
    copy_path = tmp_path / 'README.md'
    copy_path.write_text(edited, encoding='utf-8')
    result = run_check(str(copy_path))
    assert result.returncode == 1
    assert 'run `make figures`' in result.stdout and '-| baseline |' in result.stdout


def test_a_results_file_committed_without_rendering_fails(figures, results_copy):
    document = json.loads((results_copy / 'onnx_latency.json').read_text())
    document['results']['demo']['torch_ms']['p50'] += 1.0
    (results_copy / 'onnx_latency.json').write_text(json.dumps(document))
    path = TARGETS[0]
    rendered = figures.render(path)
    assert rendered != path.read_text(encoding='utf-8')
    assert f"{document['results']['demo']['torch_ms']['p50']:.1f} /" in rendered


def test_a_new_results_file_appears_in_the_sources_table(figures, results_copy):
    shutil.copy(results_copy / 'fusion.json', results_copy / 'fusion.quick.json')
    assert '`fusion.quick.json`' in figures.sources_table()


def test_markers_must_pair_up_and_name_a_renderer(figures):
    markdown = sys.modules['common.markdown']
    good = '<!-- figures:a -->\nold\n<!-- /figures:a -->\n'
    assert markdown.render_blocks(good, {'a': lambda: 'new'}) == (
        '<!-- figures:a -->\n\nnew\n\n<!-- /figures:a -->\n')
    bad = {'never closed': '<!-- figures:a -->\n',
           'without its opening': '<!-- /figures:a -->\n',
           'opens inside': '<!-- figures:a -->\n<!-- figures:b -->\n<!-- /figures:b -->\n'
                           '<!-- /figures:a -->\n',
           'appears twice': good + good,
           'no renderer': '<!-- figures:zzz -->\n<!-- /figures:zzz -->\n'}
    for reason, text in bad.items():
        with pytest.raises(markdown.MarkerError, match=reason):
            markdown.render_blocks(text, {'a': lambda: 'new', 'b': lambda: 'x'})


def test_captions_name_the_file_commit_date_mode_and_tree_state(figures):
    markdown = sys.modules['common.markdown']
    base = {'mode': 'quick', 'settings': {'threads': 2},
            'machine': {'git_commit': 'abcdef0123456789', 'date_utc': '2027-01-02T03:04:05+00:00',
                        'load_average_start': [0.5, 0.4, 0.3]},
            'load_average_end': [0.7, 0.6, 0.5]}
    old = markdown.caption(markdown.Source('x.json', base))
    assert all(part in old for part in ('`benchmarks/results/x.json`', '`abcdef0`', '2027-01-02',
                                        'quick mode', 'tree state not recorded', '2 threads',
                                        'load 0.50 at the start, 0.70 at the end'))
    for dirty, text in ((True, '**dirty tree**'), (False, 'clean tree')):
        document = dict(base, provenance={'git': {'commit': 'fedcba9876543210', 'dirty': dirty}})
        line = markdown.caption(markdown.Source('x.json', document))
        assert text in line and '`fedcba9`' in line


def test_captions_and_sources_name_the_cpu_vector_extensions(figures, results_copy):
    markdown = sys.modules['common.markdown']
    machine = {'git_commit': 'abcdef0123456789', 'date_utc': '2027-01-02T03:04:05+00:00',
               'load_average_start': [0.5, 0.4, 0.3], 'cpu_model': 'AMD EPYC'}
    document = {'mode': 'full', 'settings': {'threads': 2}, 'load_average_end': [0.7, 0.6, 0.5],
                'machine': dict(machine, cpu_extensions=['avx2', 'fma', 'avx512f',
                                                         'avx512_vnni'])}
    assert 'AMD EPYC (avx2 fma avx512f avx512_vnni), 2 threads' in markdown.caption(
        markdown.Source('x.json', document))
    # A file from before the extensions were recorded says nothing it does not know.
    assert 'AMD EPYC' not in markdown.caption(markdown.Source('x.json', dict(
        document, machine=machine)))
    (results_copy / 'x.json').write_text(json.dumps(document))
    assert 'AMD EPYC (avx2 fma avx512f avx512_vnni), ' in figures.sources_table()
    (results_copy / 'x.json').write_text(json.dumps(dict(document, machine=machine)))
    assert 'AMD EPYC (extensions not recorded), ' in figures.sources_table()


def test_vector_extensions_are_read_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / 'cpuinfo'
    cpuinfo.write_text('processor\t: 0\nmodel name\t: AMD EPYC\n'
                       'flags\t\t: fpu sse2 avx2 fma avx512f avx512_vnni\n\n'
                       'processor\t: 1\nflags\t\t: fpu\n')
    assert provenance.vector_extensions(cpuinfo) == ['avx2', 'fma', 'avx512f', 'avx512_vnni']
    cpuinfo.write_text('processor\t: 0\nFeatures\t: fp asimd asimddp i8mm\n')
    assert provenance.vector_extensions(cpuinfo) == ['asimd', 'asimddp', 'i8mm']
    assert provenance.vector_extensions(tmp_path / 'absent') == []
    facts = provenance.machine_facts()
    assert facts['cpu_extensions'] == provenance.vector_extensions()


def test_a_known_caveat_is_printed_once_per_file(figures):
    text = figures.render(TARGETS[0])
    note = figures.NOTES[('accuracy.json', 'a14a6418c7723c23c395b6e134c3ea4379ed6bf9')]
    assert text.count(note) == 1
    assert text.count('see the note on `accuracy.json` above') == 4


def test_train_speed_speedups_are_ratios_of_median_steps(figures):
    document = json.loads((RESULTS / 'train_speed.json').read_text())
    paper = document['results']['sizes']['paper']['variants']
    median = {name: v['step_s']['p50'] for name, v in paper.items()}
    block = figures.renderers()['train-speed-paper']()
    row = next(line for line in block.splitlines() if line.startswith('| tcmalloc |'))
    assert f"| {median['baseline'] / median['tcmalloc']:.2f} |" in row
    assert f"| {median['tcmalloc']:.3f} s |" in row
    goals = figures.renderers()['train-speed-goals']()
    assert f"{median['baseline'] / median['tcmalloc']:.2f}x" in goals
    assert 'by median step' in goals and 'by images/s over all steps' in goals


def _summary(p50: float) -> dict:
    return {'count': 3, 'mean': p50, 'p50': p50, 'p95': p50 + 1, 'p99': p50 + 2,
            'min': p50 - 1, 'max': p50 + 2}


def _node(fusion: str, p50: float, pose_stream: float) -> dict:
    stages = {'decode': 0.1, 'preprocess': 1.0, 'inference': 20.0, 'tf': 0.2,
              'pose_stream': pose_stream, 'publish': 0.5}
    stages['total'] = sum(stages.values())
    return {'fusion': fusion, 'node_ms': _summary(p50), 'ratio_p50': p50 / 20.0,
            'ratio_mean': p50 / 20.0, 'node_stages_ms': stages, 'node_stages_frames': 3,
            'outside_worker_ms': p50 - stages['total'], 'pose_stream_share': pose_stream / p50}


def test_the_latency_table_states_the_fusion_share(figures, results_copy):
    nodes = {'window': _node('window', 27.0, 4.5), 'none': _node('none', 23.0, 0.5)}
    measurement = {'model': 'demo', 'parameters': 1_100_000, 'device': 'cpu', 'precision': 'fp32',
                   'direct_ms': _summary(20.0), 'direct_main_thread_ms': _summary(20.0),
                   'direct_stages_ms': {'preprocess': 1.0, 'inference': 19.0}, 'nodes': nodes,
                   'fusion_cost': {'pose_stream_window_ms': 4.5, 'pose_stream_none_ms': 0.5,
                                   'fusion_ms': 4.0, 'share_of_node': 4.0 / 27.0,
                                   'node_p50_difference_ms': 4.0}}
    document = {'benchmark': 'latency', 'mode': 'full',
                'machine': {'git_commit': '1' * 40, 'date_utc': '2027-01-01T00:00:00+00:00',
                            'load_average_start': [0.1, 0.1, 0.1]},
                'load_average_end': [0.2, 0.2, 0.2],
                'provenance': {'git': {'commit': '1' * 40, 'dirty': True}},
                'settings': {'threads': 2, 'frames': 3, 'warmup': 2, 'image_size': [640, 480],
                             'encoding': 'rgb8', 'target_ratio': 1.15, 'goal_ratio': 1.05,
                             'fusion': ['window', 'none'],
                             'node_parameters': {'image_qos': 'reliable'}},
                'results': {'measurements': [measurement], 'echo_node_ms': _summary(1.0),
                            'goals': {'models': {'demo': {'ratio_p50': 1.35, 'met': False}}}}}
    (results_copy / 'latency.json').write_text(json.dumps(document))
    block = figures.renderers()['latency']()
    assert '**dirty tree**' in block and 'Stale' not in block
    assert '| demo | 4.50 / 0.50 ms | 4.00 ms | 14.8 % | 4.0 ms | 1.35 / 1.15 | **not met** |' \
        in block
    for fusion, ratio in (('window', '1.35'), ('none', '1.15')):
        assert f'| {fusion} | 20.0 ms |' in block and f'**{ratio}**' in block


def test_the_demo_results_file_feeds_the_readme_table(figures, results_copy, monkeypatch):
    scenes = [types.SimpleNamespace(scene=name, images=100, median_position_m=m,
                                    median_orientation_deg=10.0, scene_accuracy=0.99,
                                    baseline_median_position_m=3.0)
              for name, m in (('atrium', 1.25), ('lab', 0.75))]
    report = types.SimpleNamespace(scenes=scenes, average_median_position_m=1.0,
                                   average_median_orientation_deg=10.0, scene_accuracy=0.99,
                                   baseline_average_median_position_m=3.0)
    coverage = types.SimpleNamespace(to_dict=lambda: {
        'position': {'inside': {1: 0.3, 2: 0.8, 3: 0.95}, 'mean_nees': 2.5},
        'rotation': {'inside': {1: 0.4, 2: 0.9, 3: 0.99}, 'mean_nees': 1.5}})
    live_report = results_copy.parent / 'report.json'
    live_report.write_text(json.dumps({'counts': {'images': 300, 'answered': 299, 'dropped': 1},
                                       'latency': {'kind': 'end_to_end', 'median_ms': 41.0,
                                                   'p95_ms': 47.5}}))
    figures_ = {**demo.report_figures(report, coverage), 'made_fresh': {
        'world': False, 'training': True, 'bundle': True},
        'live': demo.live_figures(live_report), 'seconds': 360.0}
    settings = {'config': 'synth_demo', 'scenes': 2, 'world_seed': 0, 'train_frames': 300,
                'test_frames': 100, 'train_sequences': 6, 'size': '320x240', 'epochs': 30,
                'bag_rate_hz': 5.0, 'device': 'auto', 'backbone': 'efficientnet_lite0',
                'augmented_views': 4}
    machine = provenance.machine_facts()
    path = demo.write_results(results_copy / 'demo.json', machine, settings, figures_,
                              ['--epochs', '30'])
    document = json.loads(path.read_text())
    assert document['provenance']['command'] == 'python -m mspr_training.demo --epochs 30'
    block = figures.renderers()['demo']()
    assert '| atrium | 1.25 m | 10.0° | 99 % | 3.00 m |' in block
    assert '(ours / naive 0.33)' in block
    assert '80 % / 90 %' in block and '299 / 300, 1' in block and '41.0 / 47.5 ms' in block
    assert '6.0 min (reused: world)' in block
    assert f"commit `{machine['git_commit'][:7]}`" in block


def test_git_state_ignores_results_files_and_lists_the_rest(monkeypatch):
    outputs = {('rev-parse', 'HEAD'): 'a' * 40 + '\n'}

    def fake_git(*args):
        return outputs.get(args)

    monkeypatch.setattr(provenance, '_git', fake_git)
    outputs[('status', '--porcelain', '--untracked-files=normal')] = (
        ' M benchmarks/results/latency.json\n?? benchmarks/results/new.json\n')
    assert provenance.git_state() == {'commit': 'a' * 40, 'dirty': False, 'changes': []}
    outputs[('status', '--porcelain', '--untracked-files=normal')] = (
        ' M mspr_ros/node.py\nR  benchmarks/results/a.json -> other/a.json\n')
    state = provenance.git_state()
    assert state['dirty'] is True
    assert state['changes'] == [' M mspr_ros/node.py',
                                'R  benchmarks/results/a.json -> other/a.json']
    outputs[('status', '--porcelain', '--untracked-files=normal')] = ''.join(
        f' M f{index}.py\n' for index in range(provenance.MAX_LISTED_CHANGES + 5))
    assert provenance.git_state()['changes'][-1] == '... and 5 more'
    outputs.clear()
    assert provenance.git_state() == {'commit': 'unknown', 'dirty': None, 'changes': []}


def test_run_record_holds_command_versions_threads_and_load():
    machine = copy.deepcopy(provenance.machine_facts())
    record = provenance.run_record(machine, [str(BENCHMARKS / 'latency.py'), '--quick'])
    assert record['git']['commit'] == machine['git_commit']
    assert record['git']['dirty'] in (True, False, None)
    assert record['command'].endswith('latency.py --quick')
    assert record['command'].startswith('python ')
    assert set(record['packages']) == {'torch', 'numpy', 'onnxruntime', 'rclpy'}
    assert record['packages']['torch'] and record['packages']['numpy']
    assert record['threads']['torch_intra_op'] >= 1
    assert record['duration_s'] >= 0 and record['date_utc_end'] >= record['date_utc_start']
    assert len(record['load_average_start']) == len(record['load_average_end']) == 3
