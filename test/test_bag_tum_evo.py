"""mspr-bag-eval exports TUM trajectories; evo's APE on them equals our metrics.

evo (GPL-3.0) is a test-only dependency: the comparison skips, with the reason, without it.
"""
import json
from pathlib import Path

import numpy as np
import pytest

from mspr_ros.camera.model import CameraModel
from mspr_training.bags.cli import main
from mspr_training.bags.tum import format_stamp, read_tum, write_tum
from mspr_training.synth import build_world, plan_sequences, write_rosbag

NS_PER_S = 1_000_000_000


def test_tum_files_keep_nanosecond_stamps_and_canonical_quaternions(tmp_path):
    stamps = [1_704_067_200_033_333_333, 1_704_067_200_066_666_667, 5]
    positions = np.array([[1.0, -2.5, 0.125], [1e-9, 3.0, -7.0], [0.0, 0.0, 0.0]])
    # The middle quaternion has w < 0: it is written as the same rotation with w >= 0.
    orientations = np.array([[0.0, 0.0, 0.0, 1.0], [0.0, 0.6, 0.0, -0.8], [0.5, 0.5, 0.5, 0.5]])
    path = write_tum(tmp_path / 'x.tum', stamps, positions, orientations, comment='a\nb')
    lines = path.read_text().splitlines()
    assert lines[:3] == ['# a', '# b', '# timestamp tx ty tz qx qy qz qw']
    assert lines[3].split()[0] == '1704067200.033333333' and format_stamp(5) == '0.000000005'
    got_stamps, got_positions, got_orientations = read_tum(path)
    assert got_stamps.tolist() == stamps
    np.testing.assert_array_equal(got_positions, positions)
    np.testing.assert_allclose(got_orientations[1], [0.0, -0.6, 0.0, 0.8], atol=1e-15)
    with pytest.raises(ValueError, match='lengths differ'):
        write_tum(tmp_path / 'y.tum', stamps[:2], positions, orientations)


@pytest.fixture(scope='module')
def drifting_bag(tmp_path_factory) -> Path:
    """12 frames (three scenes, 4 each) at 5 Hz with drifting odometry, mcap."""
    world = build_world(seed=0, num_scenes=3)
    plans = plan_sequences(world, train_frames=1, test_frames=4, train_sequences=1,
                           test_sequences=1)
    path = tmp_path_factory.mktemp('tum') / 'bag'
    write_rosbag(world, path, rate_hz=5.0, plans=plans, camera=CameraModel.from_fov(160, 120))
    return path


def _evo_ape(reference_file, estimate_file, relation_name):
    """Return evo's APE (no alignment) of two TUM files, as ``evo_ape`` computes it."""
    from evo.core import metrics, sync
    from evo.tools import file_interface
    reference = file_interface.read_tum_trajectory_file(str(reference_file))
    estimate = file_interface.read_tum_trajectory_file(str(estimate_file))
    reference, estimate = sync.associate_trajectories(reference, estimate, max_diff=1e-6)
    ape = metrics.APE(getattr(metrics.PoseRelation, relation_name))
    ape.process_data((reference, estimate))
    return ape


@pytest.mark.parametrize('truth', ['camera', 'base'])
def test_evo_ape_on_the_exported_trajectories_equals_our_metrics(drifting_bag, tiny_bundle_path,
                                                                 tmp_path, truth):
    pytest.importorskip('evo', reason='evo (test-only, GPL-3.0) is not installed')
    out = tmp_path / 'report'
    # Base ground truth composes the true map -> odom (/ground_truth/tf) with the drifting
    # odometry (/tf): what a drift-free base pose would be.
    extra = ['--gt-frames', 'map', 'base_link'] if truth == 'base' else []
    assert main([str(drifting_bag), '--weights', str(tiny_bundle_path), '--device', 'cpu',
                 '--out', str(out), '--quiet', *extra]) == 0
    report = json.loads((out / 'report.json').read_text())
    assert report['trajectories'] == ['estimate.tum', 'ground_truth.tum']
    frames = [f for f in report['frames'] if 'position_error_m' in f]
    assert len(frames) == report['counts']['matched'] == 12
    # The files hold the compared frame's poses at the image stamps.
    stamps, positions, _ = read_tum(out / 'estimate.tum')
    assert stamps.tolist() == [f['stamp_ns'] for f in frames]
    np.testing.assert_allclose(positions, [f['position'] for f in frames], atol=1e-12)
    if truth == 'base':
        assert report['ground_truth']['compared_frame'] == 'base_link'
        assert '/ground_truth/tf' in report['ground_truth']['source']

    translation = _evo_ape(out / 'ground_truth.tum', out / 'estimate.tum', 'translation_part')
    rotation = _evo_ape(out / 'ground_truth.tum', out / 'estimate.tum', 'rotation_angle_deg')
    # Frame by frame, then every statistic evo_ape prints.
    np.testing.assert_allclose(translation.error, [f['position_error_m'] for f in frames],
                               rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(rotation.error, [f['orientation_error_deg'] for f in frames],
                               rtol=1e-6, atol=1e-5)
    for name in ('rmse', 'mean', 'median', 'std', 'min', 'max'):
        assert translation.get_all_statistics()[name] == pytest.approx(
            report['ape']['position_m'][name], rel=1e-9, abs=1e-9), name
        assert rotation.get_all_statistics()[name] == pytest.approx(
            report['ape']['orientation_deg'][name], rel=1e-6, abs=1e-5), name
    # The per-scene medians of the paper's metrics are evo's medians over each scene's frames.
    for scene in report['metrics']['scenes']:
        rows = [i for i, f in enumerate(frames) if f['gt_scene'] == scene['scene']]
        assert np.median(translation.error[rows]) == pytest.approx(
            scene['median_position_m'], rel=1e-9)
        assert np.median(rotation.error[rows]) == pytest.approx(
            scene['median_orientation_deg'], rel=1e-6, abs=1e-5)
