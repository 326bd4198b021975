"""``mspr-align``: fit ``map <- scene`` per scene and write it into the node's parameter file.

The rendered world's camera loops are placed in a "map" with a known alignment per scene; the
node's poses (computed with a wrong starting alignment, with noise and gross outliers such as a
misclassified frame) and a reference localizer's map poses go into a rosbag2 recording, and
the fit must recover every alignment to 1 cm and 0.1 degrees. The bags are recorded as a loaded
robot at scene borders records them: scenes change every few frames and each topic is logged with
its own delay, so the order of arrival pairs poses with the wrong scene, and only the stamps of
``~/pose_raw`` and ``~/scene_camera_pose`` tie each pose to its scene. The bag test fits with
``--yaw-only`` (a ground robot on a 2D map): from a planar run, a full 3-D fit pins the tilt only
as well as the trajectory's width allows (measured here: 0.22 deg and 12 mm for the narrow
corridor with 2 cm position noise), which is what that option is for.
"""
import json
from pathlib import Path
import shutil

import numpy as np
import pytest
from scipy.spatial.transform import Rotation
import yaml

from mspr_ros.geometry.transforms import SceneAlignment, Transform
from mspr_ros.ros import interface
from mspr_training.align import (AlignmentError, build_parser, current_alignments, main,
                                 read_bag_pairs, robust_umeyama, scenes_by_stamp, Similarity,
                                 umeyama, write_alignments)
from mspr_training.bags.writer import BagWriter
from mspr_training.synth.camera_paths import plan_path
from mspr_training.synth.rosbag_writer import EXTRINSIC
from mspr_training.synth.world import build_world

ROOT = Path(__file__).resolve().parents[1]
START_NS = 1_704_067_200_000_000_000
PERIOD_NS = 200_000_000  # the node at 5 Hz
MS = 1_000_000
POSE_RAW = '/mspr_localizer/pose_raw'
SCENE_CAMERA_POSE = '/mspr_localizer/scene_camera_pose'
AMCL = '/amcl_pose'
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


def _as_matrix(similarity):
    matrix = np.eye(4)
    matrix[:3, :3], matrix[:3, 3] = similarity.rotation, similarity.translation
    return matrix


def _record_frame(bag, stamp, scene, T_scene_cam, node_base, true_base, scene_log, pose_log):
    """Write what the node and AMCL publish for one image (a log time None: not recorded).

    The node publishes ``~/scene_camera_pose`` (frame_id = the scene) for every classified
    image and ``~/pose_raw`` for the accepted ones, both with the image's stamp; the recorder
    logs each at its own time.
    """
    bag.write_pose_with_covariance(AMCL, stamp, 'map', Transform.from_matrix(true_base),
                                   np.eye(6) * 1e-4, log_time_ns=stamp + 10 * MS)
    if scene_log is not None:
        bag.write_pose(SCENE_CAMERA_POSE, stamp, scene, Transform.from_matrix(T_scene_cam),
                       log_time_ns=scene_log)
    if pose_log is not None:
        bag.write_pose_with_covariance(POSE_RAW, stamp, 'map', Transform.from_matrix(node_base),
                                       np.eye(6) * 1e-2, log_time_ns=pose_log)


def _interleaved(names, frames, rng):
    """Return (scene, index) of every frame, the scenes taking turns in runs of 1 to 4 frames.

    A robot at the border of two scenes sees the classified scene change every few frames
    (here the scenes lie apart in the map: the fit pairs each stamp on its own, so only how
    often the scene changes matters).
    """
    left = {name: list(range(frames)) for name in names}
    order = []
    while any(left.values()):
        name = rng.choice([n for n in names if left[n]])
        run = int(rng.integers(1, 5))
        order += [(name, left[name].pop(0)) for _ in range(min(run, len(left[name])))]
    return order


def _write_robot_bag(path, rng, frames=150, outlier_fraction=0.15, noise_m=0.02):
    """Record the node's outputs (start alignment + noise + outliers) and AMCL's poses.

    The machine is loaded: the recorder logs ``~/scene_camera_pose`` 30 to 700 ms and
    ``~/pose_raw`` 30 to 150 ms after the image, so the bag's order is not the stamps'. Every
    7th frame of a scene is rejected by the gate (a scene message, no pose); every 13th loses
    its scene message in the recorder (a pose without a scene: left out and counted).

    Returns:
        the scene names and ``[(stamp, scene, scene log time or None, pose log time or None)]``.
    """
    world = build_world(seed=0)
    cam_to_base = np.linalg.inv(EXTRINSIC)
    paths = {name: plan_path(world.scene(name), frames, seed=index)
             for index, name in enumerate(world.scene_names)}
    outliers = {name: rng.random(frames) < outlier_fraction for name in world.scene_names}
    records = []
    with BagWriter(path) as bag:
        for i, (name, k) in enumerate(_interleaved(list(world.scene_names), frames, rng)):
            stamp = START_NS + i * PERIOD_NS
            T_scene_cam = paths[name][k].copy()
            true_base = _as_matrix(_similarity(TRUE_PLACEMENT[name])) @ T_scene_cam @ cam_to_base
            true_base[:3, 3] += rng.normal(0, 0.002, 3)  # a good lidar AMCL
            T_scene_cam[:3, 3] += rng.normal(0, noise_m, 3)
            if outliers[name][k]:  # e.g. a confident wrong place: metres off
                T_scene_cam[:3, 3] += rng.uniform(-6, 6, 3)
            node_base = _as_matrix(_similarity(START_PLACEMENT[name])) @ T_scene_cam @ cam_to_base
            scene_log = None if k % 13 == 6 else stamp + int(rng.uniform(30, 700) * MS)
            pose_log = None if k % 7 == 3 else stamp + int(rng.uniform(30, 150) * MS)
            _record_frame(bag, stamp, name, T_scene_cam, node_base, true_base, scene_log,
                          pose_log)
            records.append((stamp, name, scene_log, pose_log))
    return world.scene_names, records


def _scene_by_arrival(records, window_ns=10**9):
    """Pair each pose with the first scene message logged at or after its stamp (the old rule)."""
    arrivals = sorted((log, name) for _, name, log, _ in records if log is not None)
    logs = np.array([log for log, _ in arrivals])
    chosen = {}
    for stamp, _, _, pose_log in records:
        j = int(np.searchsorted(logs, stamp))
        if pose_log is not None and j < len(logs) and logs[j] - stamp <= window_ns:
            chosen[stamp] = arrivals[j][1]
    return chosen


@pytest.mark.slow
def test_bag_alignment_recovers_the_placement_and_writes_the_params_file(tmp_path, capsys):
    names, records = _write_robot_bag(tmp_path / 'robot_run', np.random.default_rng(7))
    assert sorted(names) == sorted(TRUE_PLACEMENT)
    truth = {stamp: name for stamp, name, _, pose_log in records if pose_log is not None}
    by_arrival = _scene_by_arrival(records)
    wrong = sum(by_arrival.get(stamp) != name for stamp, name in truth.items())
    assert wrong > 0.2 * len(truth), 'arrival order must mis-assign, or this test proves nothing'
    params = tmp_path / 'mspr_ros.yaml'
    shutil.copy(ROOT / 'config' / 'mspr_ros.yaml', params)
    write_alignments(params, {n: _similarity(START_PLACEMENT[n]).as_param() for n in names})
    before = yaml.safe_load(params.read_text())

    # The default topics: ~/pose_raw paired with ~/scene_camera_pose by stamp.
    status = main(['--bag', str(tmp_path / 'robot_run'), '--params', str(params),
                   '--write', str(params), '--report', str(tmp_path / 'report.json'),
                   '--yaw-only'])
    output = capsys.readouterr().out
    assert status == 0, output
    assert '/tf_static' in output

    # Every pose with a scene message of its stamp, and only those, went to its own scene.
    paired = [(s, n) for s, n, scene_log, pose_log in records if None not in (scene_log, pose_log)]
    unpaired = len(truth) - len(paired)
    assert unpaired > 0
    assert (f'{len(paired)} of {len(truth)} poses on {POSE_RAW} paired; {unpaired} left out '
            f'without a scene on {SCENE_CAMERA_POSE} of their stamp; 0 left out without a '
            'reference pose') in output
    report = json.loads((tmp_path / 'report.json').read_text())
    for name in names:
        assert report[name]['residuals']['pairs'] == sum(n == name for _, n in paired), name

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


# Twelve images at 5 Hz; the scene changes every one to three frames.
SMALL_SCENES = ['atrium', 'atrium', 'lab', 'atrium', 'lab', 'lab', 'corridor', 'atrium',
                'corridor', 'lab', 'corridor', 'corridor']
SMALL_GATED = 5  # the gate rejects this frame: a scene message, no pose
SMALL_LOST = 8  # the recorder loses this frame's scene message: a pose without a scene


def _small_position(index):
    """Return a distinct, non-collinear base position per frame: a pair shows its frame."""
    return np.array([float(index), float(index % 3), 0.1 * index])


def _write_small_bag(path, scene_topic_type='PoseStamped'):
    """Record ``SMALL_SCENES`` with every scene message logged 450 ms after its image.

    The poses are logged 50 ms after theirs, so the first scene message logged after a pose's
    stamp is that of the image two frames earlier. Besides ``~/pose_raw`` the fused ``~/pose``
    is recorded, 100 m away, to tell the two apart; ``scene_topic_type='String'`` records the
    unstamped ``~/scene`` of older recordings instead of ``~/scene_camera_pose``.
    """
    with BagWriter(path) as bag:
        for index, scene in enumerate(SMALL_SCENES):
            stamp = START_NS + index * PERIOD_NS
            base = np.eye(4)
            base[:3, 3] = _small_position(index)
            fused = base.copy()
            fused[:3, 3] += 100.0
            scene_log = None if index == SMALL_LOST else stamp + 450 * MS
            pose_log = None if index == SMALL_GATED else stamp + 50 * MS
            if scene_topic_type == 'String':
                if scene_log is not None:
                    bag.write_string('/mspr_localizer/scene', scene_log, scene)
                scene_log = None
            _record_frame(bag, stamp, scene, np.eye(4), base, base, scene_log, pose_log)
            if pose_log is not None:
                bag.write_pose_with_covariance('/mspr_localizer/pose', stamp, 'map',
                                               Transform.from_matrix(fused), np.eye(6),
                                               log_time_ns=pose_log)


def test_each_pose_takes_the_scene_of_its_own_stamp_not_of_the_latest_arrival(tmp_path):
    _write_small_bag(tmp_path / 'bag')
    bag = read_bag_pairs(tmp_path / 'bag', POSE_RAW, AMCL, SCENE_CAMERA_POSE, None)
    for scene in ('atrium', 'corridor', 'lab'):
        expected = [i for i, name in enumerate(SMALL_SCENES)
                    if name == scene and i not in (SMALL_GATED, SMALL_LOST)]
        assert np.allclose(bag.pairs[scene].source, [_small_position(i) for i in expected])
        assert np.allclose(bag.pairs[scene].target, bag.pairs[scene].source)
    assert (bag.poses, bag.without_scene, bag.without_reference) == (11, 1, 0)
    # --pose-topic still reads another pose topic (here the fused ~/pose).
    fused = read_bag_pairs(tmp_path / 'bag', '/mspr_localizer/pose', AMCL, SCENE_CAMERA_POSE,
                           None, max_gap_s=1.0)
    assert np.allclose(fused.pairs['lab'].source - bag.pairs['lab'].source, 100.0)


def test_scenes_match_by_exact_stamp_and_a_stamp_of_two_scenes_is_left_out():
    names = scenes_by_stamp(np.array([10, 20, 20, 30, 40]), ['a', 'b', 'c', '/d', 'd'],
                            np.array([10, 20, 30, 40, 41]))
    assert names.tolist() == ['a', None, 'd', 'd', None]


def test_a_string_scene_topic_is_refused_with_what_to_record(tmp_path, capsys):
    _write_small_bag(tmp_path / 'old', scene_topic_type='String')
    assert main(['--bag', str(tmp_path / 'old'), '--scene-topic', '/mspr_localizer/scene']) == 2
    error = capsys.readouterr().err
    assert 'std_msgs/String' in error and 'no stamp' in error
    assert SCENE_CAMERA_POSE in error and POSE_RAW in error and '--scene NAME' in error
    # A bag of one scene needs no scene topic.
    assert main(['--bag', str(tmp_path / 'old'), '--scene', 'lab']) == 0
    output = capsys.readouterr().out
    assert f'11 of 11 poses on {POSE_RAW} paired' in output and 'lab' in output


def test_the_default_topics_are_the_nodes_pose_raw_and_scene_camera_pose():
    args = build_parser().parse_args(['--bag', 'run'])
    node = f'/{interface.NODE_NAME}/'
    assert args.pose_topic == node + interface.POSE_RAW_TOPIC.removeprefix('~/') == POSE_RAW
    assert args.scene_topic == node + interface.SCENE_CAMERA_POSE_TOPIC.removeprefix('~/') == \
        SCENE_CAMERA_POSE


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
