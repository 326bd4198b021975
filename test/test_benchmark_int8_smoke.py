"""int8_latency.py, int8_accuracy.py and torch_latency.py still run: their --smoke JSON shapes.

The helpers are those of ``test_benchmarks_smoke`` (one process per run, provenance checked).
"""
import json

import pytest
from test_benchmarks_smoke import assert_summary, rendered, run_smoke


@pytest.mark.slow
def test_int8_latency_smoke(tmp_path):
    """Issue 27: torch eager, float graph and int8 graph side by side; the int8 check."""
    document = run_smoke('int8_latency', tmp_path)
    settings, results = document['settings'], document['results']
    assert settings['sizes'] == ['tiny'] and 'reduce_range' in settings['cpu']
    tiny = results['tiny']
    calls = settings['rounds'] * settings['calls_per_round']
    for name in ('torch', 'onnxruntime', 'int8'):
        assert_summary(tiny['ms'][name], calls)
    for name in ('onnxruntime', 'int8'):
        assert tiny['ratio_to_torch'][name]['p50'] == pytest.approx(
            tiny['ms'][name]['p50'] / tiny['ms']['torch']['p50'])
    assert tiny['goal_met'] == (tiny['ratio_to_torch']['int8']['p50'] <= 0.35)
    quantization = tiny['quantization']
    assert quantization['type'] == 'int8' and quantization['float_nodes']
    assert quantization['calibration_images'] == settings['calibration_frames']
    assert quantization['check']['images'] == settings['check_frames']
    assert tiny['int8_bytes'] < tiny['float_bytes']
    text = rendered(tmp_path, document, 'int8_latency.json', 'int8-latency')
    assert 'int8 p50 (/ torch)' in text and 'tiny' in text


@pytest.mark.slow
def test_int8_accuracy_smoke(tmp_path):
    """Issue 27: one trained model exported float and int8, both evaluated; the goal judged."""
    document = run_smoke('int8_accuracy', tmp_path, '--world-seeds', '0')
    (world,) = document['results']['worlds']
    variants = world['variants']
    assert variants['float']['inference'] is None
    assert variants['int8']['inference']['quantization']['type'] == 'int8'
    # The smoke model has an activation with one value on every calibration image, where ONNX
    # Runtime's percentile calibrator fails: min-max ranges, and the bundle says why.
    assert variants['int8']['inference']['quantization']['activations'].startswith(
        'uint8, MinMax ranges (percentile calibration failed: ')
    goal = world['goal']
    for key, change in goal['relative_change'].items():
        reference = variants['float']['metrics'][key]
        assert change == pytest.approx((variants['int8']['metrics'][key] - reference) / reference)
    assert goal['met'] == (all(abs(v) <= 0.05 for v in goal['relative_change'].values())
                           and all(abs(v) <= 5.0
                                   for v in goal['coverage_change_points'].values()))
    text = rendered(tmp_path, document, 'int8_accuracy.json', 'int8-accuracy')
    assert '| 0 | int8 / float |' in text

    # Again from the same trained run, without training: exported and evaluated anew.
    first = tmp_path / 'first.json'
    first.write_text(json.dumps(document))
    again = run_smoke('int8_accuracy', tmp_path, '--world-seeds', '0', '--models-from', str(first))
    (world_again,) = again['results']['worlds']
    assert again['settings']['models_from'] == {
        'file': 'first.json', 'commit': document['provenance']['git']['commit']}
    assert world_again['train_seconds'] == world['train_seconds']
    assert world_again['variants']['float']['bundle'] == variants['float']['bundle']
    # The float export of the same checkpoint evaluates alike.
    assert world_again['variants']['float']['metrics']['average_median_position_m'] == (
        pytest.approx(variants['float']['metrics']['average_median_position_m'], rel=1e-6))
    assert any('models trained by the run of first.json' in note for note in again['notes'])
    with pytest.raises(AssertionError, match='trained with seed'):
        run_smoke('int8_accuracy', tmp_path, '--world-seeds', '0', '--seed', '1',
                  '--models-from', str(first))


@pytest.mark.slow
def test_torch_latency_smoke(tmp_path):
    """Issue 27: today's torch path and each inference rewrite side by side, with a profile."""
    document = run_smoke('torch_latency', tmp_path)
    settings, results = document['settings'], document['results']
    assert settings['sizes'] == ['tiny']
    tiny = results['tiny']
    calls = settings['rounds'] * settings['calls_per_round']
    assert list(tiny['ms']) == ['today', 'fold_bn', 'attention', 'cross_attention',
                                'channels_last', 'compiled']
    # The compiled variant was compiled as the Localizer compiles it, and timed doing so.
    assert tiny['compile_s'] > tiny['ms']['today']['max'] / 1e3   # seconds, not a forward
    for name, timing in tiny['ms'].items():
        assert_summary(timing, calls)
        assert tiny['ratio_p50'][name] == pytest.approx(
            timing['p50'] / tiny['ms']['today']['p50'])
        # Every variant computes the same outputs as today's path.
        assert tiny['max_abs_difference'][name] < 1e-4
    assert tiny['goal_met'] == (tiny['ratio_p50']['channels_last'] <= 0.72)
    assert tiny['compiled_within_goal_ratio'] == (tiny['ratio_p50']['compiled'] <= 0.72)
    arithmetic = tiny['arithmetic']
    flops = arithmetic['gflop_per_forward']
    # The tiny model's 3 scene queries x 4 heads are fewer than its width of 32: the rewrite
    # does less arithmetic (its cross-attention projects no tokens).
    assert 0 < flops['channels_last'] < flops['today']
    assert arithmetic['floor_ms'] == pytest.approx(
        flops['channels_last'] / arithmetic['matmul_gflop_s'] * 1e3)
    assert arithmetic['floor_ratio'] == pytest.approx(
        arithmetic['floor_ms'] / tiny['ms']['today']['p50'])
    for name in ('today', 'channels_last'):
        shares = [op['share'] for op in tiny['profile'][name]]
        assert shares == sorted(shares, reverse=True) and 0 < sum(shares) <= 1.0 + 1e-9
    text = rendered(tmp_path, document, 'torch_latency.json', 'torch-latency')
    assert '+ BatchNorm folded' in text and 'Where the time goes' in text
    assert 'GFLOP per forward today' in text
    assert 'compiled by torch.compile (not eager' in text
    assert 'its compile (cold cache)' in text
