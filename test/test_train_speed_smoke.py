"""``benchmarks/train_speed.py --smoke`` runs every variant with the settings it claims.

The smoke sizes say nothing about speed. These tests check the structure and internal
consistency of the JSON (images/s from the step times, ratios from images/s, phases adding up to
the step) and, above all, that each variant's process really ran with its allocator and
attention settings as read back inside that process: a variant silently measuring the wrong
thing would make the benchmark's ratios meaningless.
"""
import json
import math
import os
from pathlib import Path
import platform
import subprocess
import sys

import pytest

from mspr_ros.runtime import allocator

REPO = Path(__file__).resolve().parents[1]
# Four (or two) processes each import torch and build the model; bounds a hung run on a busy
# 2-core machine.
SMOKE_TIMEOUT_S = 300
ALL_VARIANTS = ['baseline', 'allocator', 'chunked', 'ms_depth_4x4']
TUNED = platform.libc_ver()[0] == 'glibc'  # elsewhere configure_for_training does nothing


def run_train_speed(tmp_path: Path, *extra: str) -> dict:
    """Run the benchmark's smoke mode with ``extra`` arguments; return the JSON it wrote.

    The parent's environment sets glibc allocator variables on purpose: the variant processes
    must run without them (baseline on glibc's defaults, the tuning free to act).
    """
    out = tmp_path / 'train_speed.json'
    env = dict(os.environ, OMP_NUM_THREADS='1', MSPR_BENCHMARK_WORK=str(tmp_path / 'work'),
               PYTHONUNBUFFERED='1', MALLOC_ARENA_MAX='2', MALLOC_TOP_PAD_='4096')
    result = subprocess.run(
        [sys.executable, str(REPO / 'benchmarks' / 'train_speed.py'), '--smoke', '--threads',
         '1', '--out', str(out), *extra], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=SMOKE_TIMEOUT_S, check=False)
    assert result.returncode == 0, (f'train_speed --smoke exited {result.returncode}:\n'
                                    f'{result.stdout[-3000:]}\n{result.stderr[-3000:]}')
    document = json.loads(out.read_text())
    assert (document['benchmark'], document['mode']) == ('train_speed', 'smoke')
    assert document['settings']['threads'] == 1
    assert document['machine']['cpu_model'] and isinstance(document['notes'], list)
    return document


def number(value) -> bool:
    """Return whether ``value`` is a finite non-negative number."""
    return isinstance(value, (int, float)) and math.isfinite(value) and value >= 0


def check_figures(size: dict, names: list, steps: int = 2) -> None:
    """Check every variant's figures and the ratios between them."""
    variants = size['variants']
    assert list(variants) == names and size['steps'] == steps
    for name, figures in variants.items():
        assert figures['variant'] == name and figures['steps'] == steps
        step = figures['step_s']
        assert step['count'] == steps and step['min'] > 0
        assert figures['images_per_s'] > 0
        # images/s is the batch over the mean step; the phases make up the step.
        assert figures['images_per_s'] == pytest.approx(size['batch_size'] / step['mean'])
        assert sum(figures['phase_s'].values()) == pytest.approx(step['mean'])
        assert sum(figures['phase_share'].values()) == pytest.approx(1.0)
        for key in ('minflt_per_step', 'majflt_per_step', 'utime_s_per_step',
                    'stime_s_per_step', 'system_share_of_wall'):
            assert number(figures[key]), (name, key, figures[key])
        assert sum(figures['minflt_per_phase'].values()) == pytest.approx(
            figures['minflt_per_step'])
        assert 0.0 <= figures['system_share'] <= 1.0
        # A process with torch loaded holds well over 100 MiB; ru_maxrss covers its whole life.
        assert figures['peak_rss_mib'] >= figures['rss_before_steps_mib'] > 100
        assert figures['parameters'] > 0
        for reference in ('baseline', 'ms_depth_4x4'):
            if reference in variants:
                assert size['ratios'][name][f'vs_{reference}'] == pytest.approx(
                    figures['images_per_s'] / variants[reference]['images_per_s'])
    goals = size['goals']
    today = goals['variant']
    assert today == ('tcmalloc' if 'tcmalloc' in variants else 'chunked')
    assert goals['speedup_vs_baseline'] == size['ratios'][today]['vs_baseline']
    assert goals['speedup_met'] == (goals['speedup_vs_baseline'] >= 2.2)
    assert goals['system_share'] == variants[today]['system_share']
    assert ('vs_ms_depth_4x4' in goals) == ('ms_depth_4x4' in variants)


def check_active(figures: dict, attention: str, tuned: bool) -> None:
    """Check what a variant's process reports as active against what the variant promises."""
    active, model = figures['active'], figures['model']
    encoders = model['enc_layers_t'] + model['enc_layers_rot']
    assert active['modules'] == encoders
    assert active['implementation'] == attention
    assert active['memory_efficient'] == (encoders if attention == 'chunked' else 0)
    # Counted in a warm-up step: the chunked kernel ran once per encoder layer, or never.
    assert active['chunked_calls_per_step'] == (encoders if attention == 'chunked' else 0)
    assert active['malloc_environment'] == [] and active['preloaded'] is None
    if tuned and TUNED:
        assert 'no mmap' in active['allocator']
    else:
        assert active['allocator'] is None


@pytest.mark.slow
def test_train_speed_smoke_paper(tmp_path):
    """Paper recipe (images through the trained B0), every variant, each with its settings."""
    document = run_train_speed(tmp_path)
    assert document['settings']['sizes'] == ['paper']
    size = document['results']['sizes']['paper']
    assert size['config'] == '7scenes_ours' and size['batch_size'] == 2
    check_figures(size, ALL_VARIANTS)
    variants = size['variants']
    for name, attention, tuned in (('baseline', 'plain', False), ('allocator', 'plain', True),
                                   ('chunked', 'chunked', True),
                                   ('ms_depth_4x4', 'plain', False)):
        figures = variants[name]
        check_active(figures, attention, tuned)
        assert figures['input'] == {'image': [2, 3, 64, 64]}
        model = figures['model']
        assert model['backbone'] == 'efficientnet_b0' and not model['freeze_backbone']
        depth = 4 if name == 'ms_depth_4x4' else 6
        assert (model['enc_layers_rot'], model['dec_layers_rot']) == (depth, depth)
        assert (model['enc_layers_t'], model['dec_layers_t']) == (6, 6)


@pytest.mark.slow
def test_train_speed_smoke_demo(tmp_path):
    """Demo recipe: the frozen backbone's cached maps are the input, as mspr-train feeds them."""
    document = run_train_speed(tmp_path, '--size', 'demo', '--variants', 'baseline,chunked')
    size = document['results']['sizes']['demo']
    assert size['config'] == 'synth_demo'
    check_figures(size, ['baseline', 'chunked'])
    assert set(size['ratios']['chunked']) == {'vs_baseline'}
    check_active(size['variants']['baseline'], 'plain', tuned=False)
    check_active(size['variants']['chunked'], 'chunked', tuned=True)
    for figures in size['variants'].values():
        assert set(figures['input']) == {'feat_t', 'feat_rot'}
        assert figures['model']['freeze_backbone']


@pytest.mark.slow
@pytest.mark.skipif(allocator.find_tcmalloc() is None, reason=allocator.TCMALLOC_MISSING)
def test_train_speed_smoke_tcmalloc_variant_runs_on_tcmalloc(tmp_path):
    """The tcmalloc variant's process has tcmalloc mapped; the baseline's has not."""
    document = run_train_speed(tmp_path, '--size', 'demo', '--variants', 'baseline,tcmalloc')
    size = document['results']['sizes']['demo']
    check_figures(size, ['baseline', 'tcmalloc'])
    baseline, preloaded = size['variants']['baseline'], size['variants']['tcmalloc']
    check_active(baseline, 'plain', False)
    assert preloaded['active']['preloaded'] == 'tcmalloc'
    assert preloaded['active']['malloc_environment'] == ['LD_PRELOAD']
    assert preloaded['active']['implementation'] == 'chunked'
    # mallopt is glibc's: with tcmalloc serving malloc the variant does not call it.
    assert preloaded['active']['allocator'] is None
