"""benchmarks/uncertainty.py, fusion_window.py, correlation_blocks.py, site_calibration.py run.

uncertainty.py's --smoke JSON, --replay-from on that run, fusion_window.py's sweep over
that run's bundles, correlation_blocks.py's export of its runs again and site_calibration.py's
export of them calibrated on site walks.

The helpers are those of ``test_benchmarks_smoke`` (one process per run, provenance checked).
"""
import math
from pathlib import Path

import numpy as np
import pytest
from test_benchmarks_smoke import rendered, run_smoke
from test_correlation_fit import COVARIANCE, gaussian_process_walk

from mspr_ros.estimation.error_correlation import ErrorCorrelation
from mspr_training.correlation_fit import fit_error_correlation


@pytest.mark.slow
def test_uncertainty_smoke(tmp_path):
    """Both recipes train, export and evaluate; the cross-fitted bundle is replayed fused."""
    document = run_smoke('uncertainty', tmp_path, '--world-seeds', '0')
    (run,) = document['results']['runs']
    assert run['crossfit']['calibration_method'] == 'cross-fitting'
    # The fold runs were timed beside the deployed run.
    timing = run['crossfit']['timing']
    assert timing['main_s'] > 0 and len(timing['folds_s']) == 2 and timing['extra_ratio'] > 0
    assert run['held_out']['calibration_method'] != 'cross-fitting'
    for recipe in ('crossfit', 'held_out'):
        assert set(run[recipe]['coverage']['per_scene']) == {'atrium', 'corridor', 'lab'}
    for mode in ('bundle', 'independent'):
        fused = run['replay'][mode]['fusion']
        assert fused is not None, run['replay'][mode]['notes']
        assert fused['error_correlation']['mode'] == mode
        for estimate in ('per_frame', 'fused'):
            assert set(fused[estimate]['coverage_2sigma']) == {'position', 'rotation'}
    # One training, a bundle per covariance scale, each evaluated and replayed; the first
    # (conformal, the shipped default) is the recipe's.
    scales = run['crossfit']['scales']
    assert list(scales) == ['conformal', 'moment']
    assert {s['covariance_scale']['method'] for s in scales.values()} == {'conformal', 'moment'}
    assert run['crossfit']['bundle'] == scales['conformal']['bundle']
    assert set(run['replays']) == {'conformal', 'moment'}
    assert run['replay'] == run['replays']['conformal']
    goals = document['results']['goals']['0']
    assert goals['coverage_worst_gap_points'] is not None
    text = rendered(tmp_path, document, 'uncertainty.json', 'uncertainty')
    assert 'Per frame vs fused on the recordings' in text
    assert 'cross-fitted (every walk trained), second-moment scale' in text
    assert 'learned (bundle), conformal scale' in text
    # --replay-from replays the same bundles again, trains nothing, and says where they came from.
    first = document
    document = run_smoke('uncertainty', tmp_path, '--replay-from',
                         str(tmp_path / 'uncertainty.json'))
    (again,) = document['results']['runs']
    assert again['crossfit'] == first['results']['runs'][0]['crossfit']
    assert set(again['replays']) == {'conformal', 'moment'}
    assert document['settings']['replayed_from'] == {
        'file': 'uncertainty.json', 'commit': first['provenance']['git']['commit']}
    assert any(note.startswith('replays only') for note in document['notes'])
    assert 'replays run again' in rendered(tmp_path, document, 'uncertainty.json', 'uncertainty')
    # The window sweep replays the same bundles once per distance, the window each replay used
    # recorded, and renders the worst ratios per world and distance.
    sweep = run_smoke('fusion_window', tmp_path, '--from', str(tmp_path / 'uncertainty.json'),
                      '--distances', '2', '15')
    (swept,) = sweep['results']['runs']
    assert swept['bundle'] == first['results']['runs'][0]['crossfit']['bundle']
    assert {d: r['window'] for d, r in swept['by_distance'].items()} == {'2': 2.0, '15': 15.0}
    assert set(sweep['results']['worst']['0']) == {'2', '15'}
    assert sweep['settings']['default_distance_m'] == 15.0
    text = rendered(tmp_path, sweep, 'fusion_window.json', 'fusion-window')
    assert '15 m (default)' in text and '2 m |' in text
    # The cross-fitted runs exported again: every scene's distance bins with the joint, model and
    # per-block correlations, pooled per world.
    blocks = run_smoke('correlation_blocks', tmp_path, '--from',
                       str(tmp_path / 'uncertainty.json'))
    (exported,) = blocks['results']['runs']
    assert exported['covariance_scale'] == 'conformal'
    assert exported['bundle'] != swept['bundle'] and Path(exported['bundle']).is_file()
    # The smoke world's walks are too short for a fitted model in most scenes: the scenes
    # tabulated are exactly those with one (test_correlation_blocks_pool_the_bins covers rows).
    assert set(exported['scenes']) == set(exported['models'])
    text = rendered(tmp_path, blocks, 'correlation_blocks.json', 'correlation-blocks')
    assert 'position alone, empirical' in text
    # The same deployed checkpoint calibrated on site walks of its world: its own bundle, fitted
    # on the site split, evaluated and replayed, judged beside the source's cross-fitted figures.
    site = run_smoke('site_calibration', tmp_path, '--from', str(tmp_path / 'uncertainty.json'))
    (calibrated,) = site['results']['runs']
    source_run = first['results']['runs'][0]
    assert calibrated['crossfit']['bundle'] == source_run['crossfit']['bundle']
    assert calibrated['crossfit']['replay'] == source_run['replay']
    run_dir = Path(source_run['crossfit']['bundle']).parent
    assert Path(calibrated['site']['bundle']).parent == run_dir
    assert calibrated['site']['bundle'] != source_run['crossfit']['bundle']
    variants = {'site': 'split', 'site_per_block': 'split', 'crossfit_per_block': 'cross-fitting'}
    for key, method in variants.items():
        # One bundle per calibration and error-correlation design, from the same checkpoint.
        assert calibrated[key]['calibration_method'] == method
        assert Path(calibrated[key]['bundle']) == run_dir / f'model.{key}.safetensors'
        assert calibrated[key]['replay']['bundle']['fusion'] is not None
    assert {v['error_correlation_blocks'] for v in site['settings']['variants'].values()} == {
        'joint', 'per_block'}
    assert set(site['results']['goals']['0']) == {'crossfit', *variants}
    assert site['settings']['site_frames'] == 6 and site['settings']['site_walks'] == 1
    text = rendered(tmp_path, site, 'site_calibration.json', 'site-calibration')
    assert 'site walks (--calibration-split site)' in text
    assert 'out-of-fold training walks, a model per block' in text


def test_correlation_blocks_pool_the_bins(benchmarks_on_path):
    """Each scene's bins carry the joint, model and block correlations; pooling weighs pairs."""
    import correlation_blocks
    from common.markdown import Source
    from common.tables_calibration import correlation_blocks as table
    rng = np.random.default_rng(3)
    model = ErrorCorrelation(3.0, math.inf, math.inf, 0.0, 'parameters')
    fits = [fit_error_correlation([gaussian_process_walk(rng, model, 80, turns=False)
                                   for _ in range(count)], COVARIANCE, max_pairs=10 ** 6)
            for count in (1, 3)]
    scenes = {f'scene{index}': correlation_blocks.scene_bins(fit.summary())
              for index, fit in enumerate(fits)}
    for fit, rows in zip(fits, scenes.values()):
        assert [r['pairs'] for r in rows] == [r['pairs'] for r in fit.bins['distance_m']]
        first = rows[0]
        assert first['joint'] == fit.bins['distance_m'][0]['empirical']
        assert first['position'] == fit.block_bins['position']['distance_m'][0]['empirical']
        assert first['rotation'] == fit.block_bins['rotation']['distance_m'][0]['empirical']
    pooled = correlation_blocks.pooled([{'world_seed': 1, 'seed': 0, 'scenes': scenes}])['1']
    near = pooled[0]
    a, b = (rows[0] for rows in scenes.values())
    assert near['pairs'] == a['pairs'] + b['pairs']
    for key in ('joint', 'model', 'position', 'rotation'):
        assert near[key] == pytest.approx(
            (a[key] * a['pairs'] + b[key] * b['pairs']) / near['pairs'])
    origin = {'file': 'u.json', 'commit': 'abcdef0'}
    document = {'mode': 'full', 'settings': {'threads': 2, 'source': origin},
                'results': {'runs': [{'seed': 0}], 'pooled': {'1': pooled}},
                'machine': {'git_commit': 'abcdef0', 'date_utc': '2027-01-01',
                            'load_average_start': [0.1, 0.1, 0.1]}}
    text = table(Source('correlation_blocks.json', document))
    assert f"| 1 | 0.00-0.25 m | {near['pairs']} |" in text
