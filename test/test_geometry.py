"""Unit tests of mspr_ros.geometry: transforms, quaternions, interpolation, frame chain."""
import copy
import dataclasses
import math
import pickle

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from mspr_ros.geometry.interpolation import interpolate_series, latest_per_stamp
from mspr_ros.geometry.quaternions import canonical_quaternions, is_canonical
from mspr_ros.geometry.transforms import (base_in_map, body_from_optical, canonical_quaternion,
                                          map_to_odom,
                                          optical_from_body, pose_error, quaternion_angle_deg,
                                          SceneAlignment, Transform)

YAW_90 = [0.0, 0.0, math.sqrt(0.5), math.sqrt(0.5)]


def rz(angle):
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def ry(angle):
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def rx(angle):
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def test_construction_normalises_and_copies():
    quat = np.array([0.0, 0.0, 2.0, 2.0])
    transform = Transform([1, 2, 3], quat)
    quat[:] = 0.0  # the transform must not alias the caller's array
    np.testing.assert_allclose(transform.rotation, YAW_90)
    assert transform.translation.dtype == np.float64
    assert transform.translation.shape == (3,)
    with pytest.raises(ValueError):
        transform.translation[0] = 5.0  # read-only
    with pytest.raises(dataclasses.FrozenInstanceError):
        transform.translation = np.zeros(3)


@pytest.mark.parametrize('translation, rotation, message', [
    ([0, 0, 0], [0, 0, 0, 0], 'non-zero quaternion'),
    ([0, 0, 0], [0, 0, math.nan, 1], 'finite'),
    ([0, 0, math.inf], [0, 0, 0, 1], 'finite'),
    ([0, 0], [0, 0, 0, 1], '3 elements'),
    ([0, 0, 0], [0, 0, 1], '4 elements'),
    (['a', 0, 0], [0, 0, 0, 1], 'must be 3 numbers'),
])
def test_construction_rejects_bad_input(translation, rotation, message):
    with pytest.raises(ValueError, match=message):
        Transform(translation, rotation)


def test_from_xyz_rpy_is_ros_fixed_axis_convention():
    roll, pitch, yaw = 0.3, -0.4, 2.0
    transform = Transform.from_xyz_rpy([1, 2, 3], [roll, pitch, yaw])
    expected = np.eye(4)
    expected[:3, :3] = rz(yaw) @ ry(pitch) @ rx(roll)
    expected[:3, 3] = [1, 2, 3]
    np.testing.assert_allclose(transform.as_matrix(), expected, atol=1e-12)
    np.testing.assert_allclose(transform.rpy(), [roll, pitch, yaw], atol=1e-12)
    assert transform.yaw() == pytest.approx(yaw)


def test_yaw_90_maps_x_to_y():
    transform = Transform.from_xyz_quat([0, 0, 0], YAW_90)
    np.testing.assert_allclose(transform.apply([1.0, 0.0, 0.0]), [0.0, 1.0, 0.0], atol=1e-12)
    assert transform.yaw() == pytest.approx(math.pi / 2)


def test_from_matrix_round_trip_and_rejections():
    transform = Transform.from_xyz_rpy([1, -2, 0.5], [0.1, 0.2, -2.5])
    assert Transform.from_matrix(transform.as_matrix()).almost_equal(transform, 1e-12, 1e-12)
    scaled = transform.as_matrix()
    scaled[:3, :3] *= 2.0
    with pytest.raises(ValueError, match='not a proper rotation'):
        Transform.from_matrix(scaled)
    reflected = np.diag([1.0, 1.0, -1.0, 1.0])
    with pytest.raises(ValueError, match='not a proper rotation'):
        Transform.from_matrix(reflected)
    projective = np.eye(4)
    projective[3, 0] = 0.5
    with pytest.raises(ValueError, match='last row'):
        Transform.from_matrix(projective)
    with pytest.raises(ValueError, match='4x4'):
        Transform.from_matrix(np.eye(3))


def test_composition_order_and_apply():
    t_a_b = Transform.from_xyz_rpy([1, 0, 0], [0, 0, math.pi / 2])
    t_b_c = Transform.from_xyz_rpy([0, 2, 0], [0.2, 0, 0])
    t_a_c = t_a_b @ t_b_c
    point_c = np.array([[0.5, -1.0, 3.0], [0.0, 0.0, 0.0]])
    np.testing.assert_allclose(t_a_c.apply(point_c), t_a_b.apply(t_b_c.apply(point_c)))
    np.testing.assert_allclose(t_a_c.as_matrix(), t_a_b.as_matrix() @ t_b_c.as_matrix(),
                               atol=1e-12)
    # c's origin is 2 m along b's y axis, which is a's -x axis, then shifted 1 m along a's x.
    np.testing.assert_allclose(t_a_c.translation, [-1.0, 0.0, 0.0], atol=1e-12)
    assert t_a_c.apply([1.0, 2.0, 3.0]).shape == (3,)
    with pytest.raises(ValueError, match='shape'):
        t_a_c.apply(np.zeros((4, 2)))


def test_inverse():
    transform = Transform.from_xyz_rpy([1, 2, 3], [0.5, -0.2, 1.0])
    np.testing.assert_allclose(transform.inverse().as_matrix(),
                               np.linalg.inv(transform.as_matrix()), atol=1e-12)


def test_rpy_at_gimbal_lock_keeps_yaw_defined():
    looking_down = Transform.from_xyz_rpy([0, 0, 0], [0.0, math.pi / 2, 0.0])
    assert looking_down.yaw() == pytest.approx(0.0, abs=1e-12)


def test_flatten_2d():
    transform = Transform.from_xyz_rpy([1, 2, 3], [0.3, -0.2, 1.2])
    flat = transform.flatten_2d()
    np.testing.assert_allclose(flat.translation, [1, 2, 0])
    np.testing.assert_allclose(flat.rpy(), [0, 0, transform.yaw()], atol=1e-12)
    assert transform.yaw() == pytest.approx(1.2, abs=0.2)  # heading is near the yaw


def test_canonical():
    negative_w = Transform([0, 0, 0], [0.0, 0.0, -math.sqrt(0.5), -math.sqrt(0.5)])
    canonical = negative_w.canonical()
    np.testing.assert_allclose(canonical.rotation, YAW_90)
    assert canonical.almost_equal(negative_w)
    positive = Transform([0, 0, 0], YAW_90)
    assert positive.canonical() is positive


def test_interpolate_lerp_and_slerp():
    start = Transform.from_xyz_rpy([0, 0, 0], [0, 0, 0])
    end = Transform.from_xyz_rpy([2, 4, -2], [0, 0, math.pi / 2])
    middle = start.interpolate(end, 0.5)
    np.testing.assert_allclose(middle.translation, [1, 2, -1])
    assert middle.yaw() == pytest.approx(math.pi / 4)
    assert start.interpolate(end, 0.0).almost_equal(start)
    assert start.interpolate(end, 1.0).almost_equal(end)
    # -q is the same rotation: interpolation still takes the 45 degree path, not the long way.
    flipped_end = Transform(end.translation, -end.rotation)
    assert start.interpolate(flipped_end, 0.5).almost_equal(middle)
    with pytest.raises(ValueError, match='finite'):
        start.interpolate(end, math.nan)


def test_almost_equal_tolerances():
    base = Transform.from_xyz_rpy([0, 0, 0], [0, 0, 0])
    nudged = Transform.from_xyz_rpy([1e-3, 0, 0], [0, 0, 1e-3])
    assert not base.almost_equal(nudged)
    assert base.almost_equal(nudged, tol_t=2e-3, tol_r=2e-3)
    assert not base.almost_equal(nudged, tol_t=2e-3, tol_r=5e-4)
    assert base.almost_equal(Transform([0, 0, 0], [0, 0, 0, -1]))


def test_scene_alignment_apply_with_scale():
    alignment = SceneAlignment([10, 0, 0], YAW_90, 2.0)
    t_scene_cam = Transform.from_xyz_rpy([1, 0, 0], [0, 0, 0.25])
    t_map_cam = alignment.apply(t_scene_cam)
    # position: 2 * Rz(90) [1, 0, 0] + [10, 0, 0]
    np.testing.assert_allclose(t_map_cam.translation, [10, 2, 0], atol=1e-12)
    assert t_map_cam.yaw() == pytest.approx(math.pi / 2 + 0.25)
    rigid = alignment.as_transform()
    assert rigid.almost_equal(Transform([10, 0, 0], YAW_90))
    unit_scale = SceneAlignment([10, 0, 0], YAW_90, 1.0)
    assert unit_scale.apply(t_scene_cam).almost_equal(rigid @ t_scene_cam)


def test_scene_alignment_dict_round_trip():
    alignment = SceneAlignment([1.5, -2, 0.25], [0.1, 0.2, 0.3, 0.9], 0.5)
    data = alignment.to_dict()
    assert set(data) == {'translation', 'rotation_xyzw', 'scale'}
    restored = SceneAlignment.from_dict(data)
    np.testing.assert_allclose(restored.translation, alignment.translation)
    np.testing.assert_allclose(restored.rotation, alignment.rotation)
    assert restored.scale == 0.5
    assert np.linalg.norm(restored.rotation) == pytest.approx(1.0)
    assert SceneAlignment.identity().apply(Transform.identity()).almost_equal(
        Transform.identity())


@pytest.mark.parametrize('data, message', [
    ({'translation': [0, 0, 0], 'rotation_xyzw': [0, 0, 0, 1]}, r"missing keys \['scale'\]"),
    ({'translation': [0, 0, 0], 'rotation_xyzw': [0, 0, 0, 1], 'scale': 1, 'offset': 2},
     r"unknown keys \['offset'\]"),
    ({'translation': [0, 0, 0], 'rotation_xyzw': [0, 0, 0, 1], 'scale': 0}, 'scale'),
    ({'translation': [0, 0, 0], 'rotation_xyzw': [0, 0, 0, 1], 'scale': -1}, 'scale'),
    ({'translation': [0, 0, 0], 'rotation_xyzw': [0, 0, 0, 1], 'scale': 'x'}, 'scale'),
    ({'translation': [0, 0, 0], 'rotation_xyzw': [0, 0, 0, 1], 'scale': True}, 'scale'),
    ({'translation': [0, 0, 0], 'rotation_xyzw': [0, 0, 0, 1], 'scale': math.inf}, 'scale'),
    ({'translation': [0, 0], 'rotation_xyzw': [0, 0, 0, 1], 'scale': 1}, 'translation'),
    ({'translation': [0, 0, 0], 'rotation_xyzw': [0, 0, 0, 0], 'scale': 1}, 'rotation_xyzw'),
    ([0, 0, 0], 'expected a mapping'),
])
def test_scene_alignment_from_dict_rejects(data, message):
    with pytest.raises(ValueError, match=message) as info:
        SceneAlignment.from_dict(data, context="weights.safetensors: scene 'chess'")
    assert str(info.value).startswith("weights.safetensors: scene 'chess': ")


def test_frame_chain_on_a_worked_example():
    # Robot at (2, 0) in the map, facing +y; camera 0.5 m ahead of base, 1 m up, looking forward.
    t_map_base = Transform.from_xyz_rpy([2, 0, 0], [0, 0, math.pi / 2])
    t_base_cam = Transform([0.5, 0, 1], [0, 0, 0, 1]) @ body_from_optical()
    t_map_cam = t_map_base @ t_base_cam
    np.testing.assert_allclose(t_map_cam.translation, [2, 0.5, 1], atol=1e-12)
    # the optical z axis (viewing direction) points along map +y
    np.testing.assert_allclose(t_map_cam.rotation_object.apply([0, 0, 1]), [0, 1, 0], atol=1e-12)
    assert base_in_map(t_map_cam, t_base_cam).almost_equal(t_map_base)
    # odometry has drifted: it believes the base is at (1, 1) facing +x
    t_odom_base = Transform.from_xyz_rpy([1, 1, 0], [0, 0, 0])
    t_map_odom = map_to_odom(t_map_base, t_odom_base)
    assert (t_map_odom @ t_odom_base).almost_equal(t_map_base)
    expected_odom_yaw = math.pi / 2
    assert t_map_odom.yaw() == pytest.approx(expected_odom_yaw)
    # odom origin: map pose of base minus Rz(90) applied to (1, 1)
    np.testing.assert_allclose(t_map_odom.translation, [3, -1, 0], atol=1e-12)


def test_optical_and_body_frames():
    t_body_optical = body_from_optical()
    # optical z (forward) = body x; optical x (right) = body -y; optical y (down) = body -z
    np.testing.assert_allclose(t_body_optical.apply([0, 0, 1]), [1, 0, 0], atol=1e-12)
    np.testing.assert_allclose(t_body_optical.apply([1, 0, 0]), [0, -1, 0], atol=1e-12)
    np.testing.assert_allclose(t_body_optical.apply([0, 1, 0]), [0, 0, -1], atol=1e-12)
    # the static transform ROS drivers publish: rpy (-pi/2, 0, -pi/2)
    assert t_body_optical.almost_equal(
        Transform.from_xyz_rpy([0, 0, 0], [-math.pi / 2, 0, -math.pi / 2]))
    assert (optical_from_body() @ t_body_optical).almost_equal(Transform.identity())
    np.testing.assert_allclose(optical_from_body().apply([1, 0, 0]), [0, 0, 1], atol=1e-12)


def test_pose_error_known_values():
    gt = Transform.from_xyz_rpy([0, 0, 0], [0, 0, 0])
    est = Transform.from_xyz_rpy([3, 4, 0], [0, 0, math.pi / 2])
    position_error, orientation_error = pose_error(est, gt)
    assert position_error == pytest.approx(5.0)
    assert orientation_error == pytest.approx(90.0)
    flipped = Transform(est.translation, -est.rotation)
    assert pose_error(flipped, gt)[1] == pytest.approx(90.0)
    assert pose_error(Transform.from_xyz_rpy([0, 0, 0], [math.pi, 0, 0]), gt)[1] == (
        pytest.approx(180.0))


def test_quaternion_angle_is_vectorised_and_never_nan():
    rotations = Rotation.random(200, random_state=1)
    quats = rotations.as_quat()
    same = quaternion_angle_deg(quats, quats * 3.0)
    assert same.shape == (200,)
    assert not np.any(np.isnan(same))
    np.testing.assert_allclose(same, 0.0, atol=1e-5)
    others = Rotation.random(200, random_state=2)
    expected = np.degrees((rotations.inv() * others).magnitude())
    np.testing.assert_allclose(quaternion_angle_deg(quats, others.as_quat()), expected,
                               atol=1e-5)
    with pytest.raises(ValueError, match='non-zero'):
        quaternion_angle_deg([0, 0, 0, 0], [0, 0, 0, 1])
    with pytest.raises(ValueError, match='last axis of 4'):
        quaternion_angle_deg([0, 0, 1], [0, 0, 0, 1])


def test_pickle_and_copy_keep_values_and_immutability():
    transform = Transform.from_xyz_rpy([1, 2, 3], [0.1, 0.2, 0.3])
    alignment = SceneAlignment([1, 2, 3], YAW_90, 2.5)
    for clone in (pickle.loads(pickle.dumps(transform)), copy.deepcopy(transform)):
        assert clone.almost_equal(transform, 0.0, 0.0)
        assert not clone.translation.flags.writeable
    restored = pickle.loads(pickle.dumps(alignment))
    assert restored.to_dict() == alignment.to_dict()
    assert not restored.rotation.flags.writeable


@pytest.mark.parametrize('given, expected', [
    ([0.0, 0.0, 0.6, -0.8], [0.0, 0.0, -0.6, 0.8]),     # w < 0: flipped
    ([0.0, 0.0, 0.6, 0.8], [0.0, 0.0, 0.6, 0.8]),       # w > 0: kept
    ([-1.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]),      # w == 0: first non-zero of x, y, z > 0
    ([0.0, -0.6, 0.8, 0.0], [0.0, 0.6, -0.8, 0.0]),
    ([0.0, 0.0, 2.0, 0.0], [0.0, 0.0, 1.0, 0.0]),       # normalised too
])
def test_canonical_quaternion_sign_rule(given, expected):
    np.testing.assert_allclose(canonical_quaternion(given), expected, atol=1e-15)
    np.testing.assert_allclose(canonical_quaternions([given, given])[1], expected, atol=1e-15)
    assert is_canonical(given) == np.allclose(given / np.linalg.norm(given), expected)


def test_canonical_quaternion_rejects_degenerate_input():
    for bad in ([0.0, 0.0, 0.0, 0.0], [0.0, 0.0, math.nan, 1.0], [1.0, 2.0, 3.0]):
        with pytest.raises(ValueError, match='quaternion'):
            canonical_quaternion(bad)
    with pytest.raises(ValueError, match=r'orientations must be finite, got \[0.0, 0.0, inf'):
        canonical_quaternions([[0, 0, 0, 1.0], [0, 0, math.inf, 1.0]], 'orientations')


def yaw_pose(yaw):
    return Rotation.from_euler('z', yaw).as_quat()


def test_interpolate_series_gaps_exact_hits_and_tolerance():
    stamps = [0, 100, 200, 1000]
    translations = [[0, 0, 0], [1, 2, 0], [2, 2, 0], [3, 3, 3.0]]
    quats = [yaw_pose(0.0), yaw_pose(0.4), -yaw_pose(0.8), yaw_pose(1.0)]  # a sign flip inside
    queries = [-6, -1, 0, 25, 150, 200, 500, 1000, 1004, 1006]
    positions, orientations, valid = interpolate_series(stamps, translations, quats, queries,
                                                        max_gap_ns=150, tolerance_ns=5)
    # -6 and 1006 are beyond the tolerance; 500 lies in a gap over 150 ns; 1000 is a sample.
    assert valid.tolist() == [False, True, True, True, True, True, False, True, True, False]
    np.testing.assert_allclose(positions[[1, 4, 8]], [[0, 0, 0], [1.5, 2, 0], [3, 3, 3]])
    # half way from yaw 0.4 to -q(yaw 0.8): yaw 0.6, not the long way round
    assert Rotation.from_quat(orientations[4]).as_euler('xyz')[2] == pytest.approx(0.6)
    assert Rotation.from_quat(orientations[3]).as_euler('xyz')[2] == pytest.approx(0.1)
    assert np.isnan(positions[[0, 6, 9]]).all() and np.isnan(orientations[[0, 6, 9]]).all()
    _, _, valid = interpolate_series(stamps, translations, quats, [500], max_gap_ns=None)
    assert valid.tolist() == [True]
    # one sample: valid only at its stamp (and within the tolerance)
    _, _, valid = interpolate_series([5], [[0, 0, 0]], [[0, 0, 0, 1]], [4, 5, 6, 9], None, 1)
    assert valid.tolist() == [True, True, True, False]


def test_latest_per_stamp_keeps_the_last_repeat_in_input_order():
    keep, dropped = latest_per_stamp([30, 10, 30, 20, 10])
    assert keep.tolist() == [4, 3, 2] and dropped == 2
