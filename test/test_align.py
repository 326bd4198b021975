"""``mspr-align``: fit ``map <- scene`` per scene and write it into the node's parameter file.

The rendered world's camera loops are placed in a "map" with a known alignment per scene; the
node's poses (computed with a wrong starting alignment, with noise and gross outliers such as a
misclassified frame) and a reference localizer's map poses go into a rosbag2 recording, and
the fit must recover every alignment to 1 cm and 0.1 degrees. The bag test fits with
``--yaw-only`` (a ground robot on a 2D map): from a planar run, a full 3-D fit pins the tilt only
as well as the trajectory's width allows (measured here: 0.22 deg and 12 mm for the narrow
corridor with 2 cm position noise), which is what that option is for.
"""
from pathlib import Path
import shutil

import numpy as np
import pytest
from rosbags.rosbag2 import StoragePlugin, Writer
from scipy.spatial.transform import Rotation
import yaml

from mspr_ros.geometry.transforms import SceneAlignment
from mspr_training.align import (AlignmentError, current_alignments, main, robust_umeyama,
                                 Similarity, umeyama, write_alignments)
from mspr_training.data.rosbag import typestore
from mspr_training.synth.camera_paths import plan_path
from mspr_training.synth.rosbag_writer import EXTRINSIC
from mspr_training.synth.world import build_world

ROOT = Path(__file__).resolve().parents[1]
START_NS = 1_704_067_200_000_000_000
PERIOD_NS = 200_000_000  # the node at 5 Hz
# Known placements of the scenes in the map: [x, y, z], [roll, pitch, yaw] in degrees.
TRUE_PLACEMENT = {
    'atrium': ([12.5, -3.25, 0.0], [0.0, 0.0, 37.0]),
    'corridor': ([-40.0, 18.0, 0.3], [0.0, 0.0, -121.0]),
    'lab': ([5.0, 60.0, -0.2], [0.0, 0.0, 179.0]),
}
# What the node ran with (a rough guess): the fit corrects it.
START_PLACEMENT = {
    'atrium': ([10.0, -2.0, 0.0], [0.0, 0.0, 30.0]),
    'corridor': ([0.0, 0.0, 0.0], [0.0, 0.0, 0.0]),
    'lab': ([4.0, 61.0, 0.0], [0.0, 0.0, 170.0]),
}


def _similarity(placement, scale=1.0):
    translation, rpy = placement
    return Similarity(Rotation.from_euler('xyz', rpy, degrees=True).as_matrix(),
                      np.array(translation, float), scale)


def _random_similarity(rng, with_scale):
    return Similarity(Rotation.random(random_state=rng).as_matrix(), rng.normal(0, 5, 3),
                      float(rng.uniform(0.5, 2.0)) if with_scale else 1.0)


def _rotation_error_deg(a, b):
    return float(np.degrees(Rotation.from_matrix(a.T @ b).magnitude()))


@pytest.mark.parametrize('with_scale', [False, True])
def test_umeyama_recovers_an_exact_similarity(with_scale):
    rng = np.random.default_rng(1)
    truth = _random_similarity(rng, with_scale)
    points = rng.uniform(-3, 3, (20, 3))
    fit = umeyama(points, truth.apply(points), with_scale)
    assert np.allclose(fit.rotation, truth.rotation, atol=1e-9)
    assert np.allclose(fit.translation, truth.translation, atol=1e-9)
    assert fit.scale == pytest.approx(truth.scale, rel=1e-9)


def test_planar_points_give_a_rotation_never_a_reflection():
    rng = np.random.default_rng(2)
    truth = _random_similarity(rng, False)
    points = np.c_[rng.uniform(-3, 3, (12, 2)), np.zeros(12)]  # a ground-robot trajectory
    fit = umeyama(points, truth.apply(points))
    assert np.linalg.det(fit.rotation) == pytest.approx(1.0)
    assert np.allclose(fit.apply(points), truth.apply(points), atol=1e-9)


def test_collinear_or_too_few_points_are_refused():
    line = np.outer(np.arange(5.0), [1.0, 2.0, 0.0])
    with pytest.raises(AlignmentError, match='collinear'):
        umeyama(line, line + 1.0)
    with pytest.raises(AlignmentError, match='at least 3'):
        umeyama(line[:2], line[:2])


def test_outliers_are_rejected_and_reported():
    rng = np.random.default_rng(3)
    truth = _random_similarity(rng, False)
    points = rng.uniform(-5, 5, (200, 3))
    target = truth.apply(points) + rng.normal(0, 0.01, points.shape)
    bad = rng.choice(200, 60, replace=False)  # 30 % gross errors
    target[bad] += rng.uniform(1.0, 8.0, (60, 1)) * Rotation.random(
        60, random_state=rng).apply([1.0, 0.0, 0.0])
    fit = robust_umeyama(points, target)
    assert set(np.flatnonzero(~fit.inliers)) == set(bad)
    assert np.allclose(fit.transform.translation, truth.translation, atol=0.01)
    plain = umeyama(points, target)
    assert np.linalg.norm(plain.translation - truth.translation) > 0.05, \
        'the outliers must matter, or this test proves nothing'
    summary = fit.summary()
    assert summary['pairs'] == 200 and summary['inliers'] == 140
    assert summary['rmse_m'] < 0.03


def _pose_message(types, stamp_ns, frame_id, matrix):
    msg = types.types
    x, y, z = matrix[:3, 3]
    qx, qy, qz, qw = Rotation.from_matrix(matrix[:3, :3]).as_quat()
    pose = msg['geometry_msgs/msg/Pose'](
        position=msg['geometry_msgs/msg/Point'](x=x, y=y, z=z),
        orientation=msg['geometry_msgs/msg/Quaternion'](x=qx, y=qy, z=qz, w=qw))
    header = msg['std_msgs/msg/Header'](
        stamp=msg['builtin_interfaces/msg/Time'](sec=stamp_ns // 10**9, nanosec=stamp_ns % 10**9),
        frame_id=frame_id)
    return msg['geometry_msgs/msg/PoseWithCovarianceStamped'](
        header=header, pose=msg['geometry_msgs/msg/PoseWithCovariance'](
            pose=pose, covariance=np.zeros(36)))


def _as_matrix(similarity):
    matrix = np.eye(4)
    matrix[:3, :3], matrix[:3, 3] = similarity.rotation, similarity.translation
    return matrix


def _write_robot_bag(path, rng, frames=150, outlier_fraction=0.15, noise_m=0.02):
    """Record the node's base poses (start alignment + noise + outliers) and AMCL's poses."""
    types = typestore()
    world = build_world(seed=0)
    writer = Writer(path, version=8, storage_plugin=StoragePlugin.MCAP)
    writer.open()
    node_pose = writer.add_connection('/mspr_localizer/pose',
                                      'geometry_msgs/msg/PoseWithCovarianceStamped',
                                      typestore=types)
    node_scene = writer.add_connection('/mspr_localizer/scene', 'std_msgs/msg/String',
                                       typestore=types)
    amcl = writer.add_connection('/amcl_pose', 'geometry_msgs/msg/PoseWithCovarianceStamped',
                                 typestore=types)
    cam_to_base = np.linalg.inv(EXTRINSIC)
    stamp = START_NS
    for index, name in enumerate(world.scene_names):
        T_scene_cam = plan_path(world.scene(name), frames, seed=index)
        truth = _as_matrix(_similarity(TRUE_PLACEMENT[name]))
        start = _as_matrix(_similarity(START_PLACEMENT[name]))
        outliers = rng.random(frames) < outlier_fraction
        for k, pose in enumerate(T_scene_cam):
            stamp += PERIOD_NS
            predicted = pose.copy()
            predicted[:3, 3] += rng.normal(0, noise_m, 3)
            if outliers[k]:  # e.g. a confident wrong place: metres off
                predicted[:3, 3] += rng.uniform(-6, 6, 3)
            node_base = start @ predicted @ cam_to_base
            true_base = truth @ pose @ cam_to_base
            true_base[:3, 3] += rng.normal(0, 0.002, 3)  # a good lidar AMCL
            writer.write(amcl, stamp, types.serialize_cdr(
                _pose_message(types, stamp, 'map', true_base),
                'geometry_msgs/msg/PoseWithCovarianceStamped'))
            if k % 7 == 3:
                continue  # frames the node gated: AMCL poses without a node pose
            # The node publishes ~/pose, then ~/scene, some 60 ms after the image stamp.
            writer.write(node_pose, stamp + 60_000_000, types.serialize_cdr(
                _pose_message(types, stamp, 'map', node_base),
                'geometry_msgs/msg/PoseWithCovarianceStamped'))
            writer.write(node_scene, stamp + 61_000_000, types.serialize_cdr(
                types.types['std_msgs/msg/String'](data=name), 'std_msgs/msg/String'))
        stamp += 10**9
    writer.close()
    return world.scene_names


@pytest.mark.slow
def test_bag_alignment_recovers_the_placement_and_writes_the_params_file(tmp_path, capsys):
    names = _write_robot_bag(tmp_path / 'robot_run', np.random.default_rng(7))
    assert sorted(names) == sorted(TRUE_PLACEMENT)
    params = tmp_path / 'mspr_ros.yaml'
    shutil.copy(ROOT / 'config' / 'mspr_ros.yaml', params)
    write_alignments(params, {n: _similarity(START_PLACEMENT[n]).as_param() for n in names})
    before = yaml.safe_load(params.read_text())

    status = main(['--bag', str(tmp_path / 'robot_run'), '--params', str(params),
                   '--write', str(params), '--report', str(tmp_path / 'report.json'),
                   '--yaw-only'])
    output = capsys.readouterr().out
    assert status == 0, output
    assert '/tf_static' in output

    after = yaml.safe_load(params.read_text())
    (key, block), = after.items()
    written = block['ros__parameters']
    for name in names:
        value = written[f'scenes.{name}.map_from_scene']
        fitted = SceneAlignment(value[0:3], value[3:7], value[7])
        truth = _similarity(TRUE_PLACEMENT[name])
        error_m = np.linalg.norm(fitted.translation - truth.translation)
        error_deg = _rotation_error_deg(fitted.rotation_object.as_matrix(), truth.rotation)
        assert error_m < 0.01, (name, error_m)
        assert error_deg < 0.1, (name, error_deg)
        assert fitted.scale == 1.0
    # Everything else, comments included, is as it was.
    for name, value in before[key]['ros__parameters'].items():
        if not name.startswith('scenes.'):
            assert written[name] == value, name
    assert '# Path to the .safetensors weights bundle' in params.read_text()
    assert params.read_text().count('scenes.atrium.map_from_scene:') == 2  # comment + value
    assert 'inliers' in output and 'atrium' in output


def test_named_correspondences_from_yaml_and_csv(tmp_path, capsys):
    truth = _similarity(([3.0, -1.0, 0.5], [0.0, 0.0, 64.0]), scale=1.0)
    points = {'door': [0.0, 0.0, 0.0], 'window': [4.0, 0.5, 1.0], 'pillar': [2.0, 6.0, 0.0],
              'desk': [-1.0, 3.0, 0.8]}
    mapped = {k: truth.apply(np.array([v]))[0].tolist() for k, v in points.items()}
    document = {'lab': {k: {'scene': points[k], 'map': mapped[k]} for k in points}}
    (tmp_path / 'points.yaml').write_text(yaml.safe_dump(document))
    rows = ['scene,name,scene_x,scene_y,scene_z,map_x,map_y,map_z'] + [
        ','.join(['lab', k] + [repr(v) for v in points[k] + mapped[k]]) for k in points]
    (tmp_path / 'points.csv').write_text('\n'.join(rows) + '\n')
    for source in ('points.yaml', 'points.csv'):
        out = tmp_path / f'{source}.params.yaml'
        assert main(['--correspondences', str(tmp_path / source), '--write', str(out)]) == 0
        value = yaml.safe_load(out.read_text())['/**/mspr_localizer']['ros__parameters'][
            'scenes.lab.map_from_scene']
        assert np.allclose(value[:3], truth.translation, atol=1e-9)
        assert _rotation_error_deg(Rotation.from_quat(value[3:7]).as_matrix(),
                                   truth.rotation) < 1e-6
    capsys.readouterr()
    (tmp_path / 'two.yaml').write_text(yaml.safe_dump(
        {'lab': {k: document['lab'][k] for k in ('door', 'window')}}))
    assert main(['--correspondences', str(tmp_path / 'two.yaml')]) == 2
    assert 'at least 3' in capsys.readouterr().err


def test_scale_is_fitted_only_when_asked(tmp_path):
    truth = _similarity(([1.0, 2.0, 0.0], [0.0, 0.0, 10.0]), scale=2.5)
    rng = np.random.default_rng(4)
    points = rng.uniform(-2, 2, (8, 3))
    assert robust_umeyama(points, truth.apply(points), with_scale=True).transform.scale == \
        pytest.approx(2.5)
    assert robust_umeyama(points, truth.apply(points)).transform.scale == 1.0


def test_the_starting_alignment_is_the_bundles_unless_the_params_file_overrides_it(
        tiny_bundle_path, tmp_path):
    params = tmp_path / 'params.yaml'
    override = _similarity(([1.0, 2.0, 3.0], [0.0, 0.0, 90.0])).as_param()
    write_alignments(params, {'lab': override})
    alignments = current_alignments(tiny_bundle_path, params)
    assert sorted(alignments) == ['atrium', 'corridor', 'lab']
    assert np.allclose(alignments['atrium'].translation, 0.0)  # the bundle's identity
    assert np.allclose(alignments['lab'].translation, [1.0, 2.0, 3.0])
    assert alignments['lab'].rotation == pytest.approx(override[3:7])
