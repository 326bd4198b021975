"""benchmarks/uncertainty.py and fusion_window.py still run: smoke, replay, window sweep.

uncertainty.py's --smoke JSON, --replay-from on that run, and fusion_window.py's sweep over
that run's bundles.

The helpers are those of ``test_benchmarks_smoke`` (one process per run, provenance checked).
"""
import pytest
from test_benchmarks_smoke import rendered, run_smoke


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
