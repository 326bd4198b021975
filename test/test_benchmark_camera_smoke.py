"""benchmarks/camera.py still runs: its ``--smoke`` mode writes JSON of the expected shape.

The helpers are those of ``test_benchmarks_smoke`` (one process per run, provenance checked).
"""
import pytest
from test_benchmarks_smoke import assert_summary, rendered, run_smoke


@pytest.mark.slow
def test_camera_smoke(tmp_path):
    """Issue 26: training camera vs a wide camera reprojected and resized; the remap's cost."""
    document = run_smoke('camera', tmp_path, '--world-seeds', '0')
    settings, results = document['settings'], document['results']
    assert settings['world_seeds'] == [0] and settings['opencv_threads'] == 1
    assert settings['ratio_goal'] == 1.15 and settings['remap_goal_ms'] == 2.0
    (world,) = results['worlds']
    assert world['world_seed'] == 0 and results['worlds_planned'] == 1
    cameras = world['cameras']
    # The bundle records the pinhole the network saw; the wide camera is distorted and wider.
    training = cameras['training']
    assert training['distortion_model'] == 'none' and training['width'] == training['height']
    assert cameras['wide']['distortion_model'] == 'plumb_bob'
    assert cameras['wide']['horizontal_fov_deg'] == pytest.approx(90.0, abs=0.01)
    assert cameras['wide']['horizontal_fov_deg'] > cameras['dataset']['horizontal_fov_deg']
    assert cameras['wide_reprojection']['covers']
    # The re-planned test walks are the written ones: 3 scenes x 6 frames, first and last
    # frame of each scene's walk rendered identical to its image.
    check = world['pose_check']
    assert check['frames'] == 18 and check['images_compared'] == 6
    assert check['max_position_m'] < 1e-6 and check['max_orientation_deg'] < 1e-3
    inputs = world['inputs']
    assert set(inputs) == {'training', 'wide_reprojected', 'wide_resized'}
    for figures in inputs.values():
        scenes = figures['scenes']
        assert set(scenes) == {'atrium', 'corridor', 'lab'}
        for scene in scenes.values():
            assert scene['images'] == 6 and 0.0 <= scene['scene_accuracy'] <= 1.0
            assert scene['median_position_m'] >= 0
            assert 0 <= scene['median_orientation_deg'] <= 180
        assert figures['average_median_position_m'] == pytest.approx(
            sum(s['median_position_m'] for s in scenes.values()) / 3)
    goal = world['goal']
    for name, verdict in goal['per_scene'].items():
        for other in ('wide_reprojected', 'wide_resized'):
            for key in ('position_m', 'orientation_deg'):
                assert verdict['ratios'][other][key] == pytest.approx(
                    inputs[other]['scenes'][name][f'median_{key}']
                    / inputs['training']['scenes'][name][f'median_{key}'])
        assert verdict['met'] == (max(verdict['ratios']['wide_reprojected'].values()) <= 1.15)
    assert goal['met'] == all(v['met'] for v in goal['per_scene'].values())
    remap = results['remap']
    assert remap['camera']['width'] == 640 and remap['camera']['height'] == 480
    assert remap['target'] == {key: training[key] for key in remap['target']}
    for name in ('remap', 'preprocess_resize_crop', 'preprocess_reprojected'):
        assert_summary(remap['ms'][name], remap['calls'])
        assert remap['ms'][name]['p50'] <= remap['ms'][name]['p90'] <= remap['ms'][name]['max']
    assert_summary(remap['build_ms'], 2)
    assert remap['goal_met'] == (remap['ms']['remap']['p50'] <= 2.0)
    text = rendered(tmp_path, document, 'camera.json', 'camera')
    assert '`Reprojection.apply` (the remap)' in text and '| 0 | lab |' in text
