"""Property-based tests (hypothesis) of frame maths, quaternion convention, slerp, covariance."""
import math

from hypothesis import given, settings, strategies as st
import numpy as np
from scipy.spatial.transform import Rotation

from mspr_ros.geometry.covariance import pose_covariance, two_d_covariance
from mspr_ros.geometry.interpolation import slerp_poses
from mspr_ros.geometry.quaternions import (canonical_quaternion, canonical_quaternions,
                                           is_canonical, quaternion_from_rotation)
from mspr_ros.geometry.transforms import map_to_odom, pose_error, SceneAlignment, Transform
from mspr_training.data.trajectory import Trajectory

# The shared CPU makes per-example timing meaningless; the example count bounds the runtime.
PROPERTY_SETTINGS = settings(deadline=None, max_examples=100)
TOL_T = 1e-8
TOL_R = 1e-8

coordinates = st.floats(-100.0, 100.0, allow_nan=False, allow_infinity=False)
translations = st.tuples(coordinates, coordinates, coordinates).map(np.array)
quaternions = st.tuples(*[st.floats(-1.0, 1.0, allow_nan=False)] * 4).map(np.array).filter(
    lambda q: np.linalg.norm(q) > 0.1)
transforms = st.builds(Transform, translations, quaternions)
scales = st.floats(0.01, 100.0)
alignments = st.builds(SceneAlignment, translations, quaternions, scales)
confidences = st.floats(0.0, 1.0)
inflations = st.floats(0.0, 10.0)
nonzero_factors = st.floats(0.01, 100.0) | st.floats(-100.0, -0.01)


def angle_difference(a, b):
    return abs(math.remainder(a - b, 2.0 * math.pi))


def is_symmetric_psd(matrix, scale=None):
    """Check symmetry and PSD up to rounding relative to ``scale`` (default: the entries)."""
    if scale is None:
        scale = max(float(np.max(np.abs(matrix))), 1e-300)
    symmetric = np.allclose(matrix, matrix.T, rtol=0.0, atol=1e-12 * scale)
    return symmetric and float(np.linalg.eigvalsh(matrix)[0]) >= -1e-9 * scale


@st.composite
def psd_matrices(draw):
    entries = draw(st.lists(st.floats(-2.0, 2.0), min_size=36, max_size=36))
    rank = draw(st.integers(0, 6))
    factor = np.array(entries).reshape(6, 6)[:, :rank]
    return factor @ factor.T


@PROPERTY_SETTINGS
@given(transforms)
def test_transform_times_inverse_is_identity(transform):
    assert (transform @ transform.inverse()).almost_equal(Transform.identity(), TOL_T, TOL_R)
    assert (transform.inverse() @ transform).almost_equal(Transform.identity(), TOL_T, TOL_R)


@PROPERTY_SETTINGS
@given(transforms, transforms)
def test_inverse_of_composition(a, b):
    assert (a @ b).inverse().almost_equal(b.inverse() @ a.inverse(), TOL_T, TOL_R)


@PROPERTY_SETTINGS
@given(transforms, transforms, transforms)
def test_composition_is_associative_and_matches_matrices(a, b, c):
    assert ((a @ b) @ c).almost_equal(a @ (b @ c), TOL_T, TOL_R)
    np.testing.assert_allclose((a @ b).as_matrix(), a.as_matrix() @ b.as_matrix(), atol=1e-9)


@PROPERTY_SETTINGS
@given(transforms)
def test_matrix_round_trip(transform):
    assert Transform.from_matrix(transform.as_matrix()).almost_equal(transform, TOL_T, TOL_R)


@PROPERTY_SETTINGS
@given(translations, quaternions, nonzero_factors)
def test_quaternion_normalisation_and_sign(translation, quaternion, factor):
    reference = Transform(translation, quaternion)
    scaled = Transform(translation, factor * quaternion)
    assert math.isclose(np.linalg.norm(scaled.rotation), 1.0, abs_tol=1e-12)
    # q and -q (and any non-zero multiple) are the same rotation
    assert scaled.almost_equal(reference, TOL_T, TOL_R)
    point = np.array([1.0, -2.0, 3.0])
    np.testing.assert_allclose(scaled.apply(point), reference.apply(point), atol=1e-9)
    canonical = scaled.canonical()
    assert canonical.rotation[3] >= 0.0
    assert canonical.almost_equal(reference, TOL_T, TOL_R)
    assert np.allclose(np.abs(canonical.rotation), np.abs(reference.rotation), atol=1e-12)


@PROPERTY_SETTINGS
@given(transforms, transforms)
def test_map_to_odom_reproduces_the_base_pose(t_map_base, t_odom_base):
    t_map_odom = map_to_odom(t_map_base, t_odom_base)
    assert (t_map_odom @ t_odom_base).almost_equal(t_map_base, 1e-7, TOL_R)


@PROPERTY_SETTINGS
@given(alignments, transforms, transforms)
def test_scene_alignment_with_scale(alignment, first, second):
    mapped_first = alignment.apply(first)
    rotation = alignment.rotation_object.as_matrix()
    expected_position = alignment.scale * rotation @ first.translation + alignment.translation
    np.testing.assert_allclose(mapped_first.translation, expected_position, atol=1e-7)
    # orientation is rotated, never scaled: identical to the rigid part's composition
    rigid = alignment.as_transform() @ first
    assert mapped_first.rotation_angle_to(rigid) <= TOL_R
    # distances between cameras scale by s, angles between them are unchanged
    mapped_second = alignment.apply(second)
    scene_distance = np.linalg.norm(first.translation - second.translation)
    map_distance = np.linalg.norm(mapped_first.translation - mapped_second.translation)
    assert math.isclose(map_distance, alignment.scale * scene_distance, rel_tol=1e-9,
                        abs_tol=1e-7)
    assert math.isclose(mapped_first.rotation_angle_to(mapped_second),
                        first.rotation_angle_to(second), abs_tol=1e-7)
    restored = SceneAlignment.from_dict(alignment.to_dict())
    assert restored.apply(first).almost_equal(mapped_first, 1e-9, 1e-12)


@PROPERTY_SETTINGS
@given(transforms)
def test_flatten_2d_keeps_x_y_yaw_and_is_idempotent(transform):
    flat = transform.flatten_2d()
    np.testing.assert_allclose(flat.translation[:2], transform.translation[:2], atol=1e-12)
    assert flat.translation[2] == 0.0
    assert angle_difference(flat.yaw(), transform.yaw()) <= 1e-9
    # roll = pitch = 0: a pure rotation about z
    np.testing.assert_allclose(flat.rotation[:2], 0.0, atol=1e-12)
    assert flat.flatten_2d().almost_equal(flat, 1e-12, 1e-9)


@PROPERTY_SETTINGS
@given(transforms, transforms)
def test_pose_error_is_symmetric_and_zero_on_identical_poses(a, b):
    forward = pose_error(a, b)
    backward = pose_error(b, a)
    assert math.isclose(forward[0], backward[0], rel_tol=1e-12, abs_tol=1e-12)
    assert math.isclose(forward[1], backward[1], abs_tol=1e-9)
    assert 0.0 <= forward[1] <= 180.0
    # the paper's metric is the angle of the relative rotation (up to acos rounding near 0)
    assert math.isclose(forward[1], math.degrees(a.rotation_angle_to(b)), abs_tol=1e-4)
    same = pose_error(a, Transform(a.translation, -a.rotation))
    assert same[0] == 0.0
    assert same[1] <= 1e-5


@PROPERTY_SETTINGS
@given(psd_matrices(), confidences, confidences, alignments, inflations)
def test_covariance_psd_after_inflation_and_alignment(calibration, confidence, other_confidence,
                                                      alignment, inflation):
    covariance = pose_covariance(calibration, confidence, alignment, inflation)
    assert is_symmetric_psd(covariance)
    assert is_symmetric_psd(two_d_covariance(covariance))
    # lower confidence never shrinks the covariance: the difference is PSD too
    low, high = sorted([confidence, other_confidence])
    wider = pose_covariance(calibration, low, alignment, inflation)
    narrower = pose_covariance(calibration, high, alignment, inflation)
    # rounding of the difference is relative to the matrices subtracted, not to the difference
    assert is_symmetric_psd(wider - narrower, scale=max(float(np.max(np.abs(wider))), 1e-300))
    # the trace of the rotated position block is s^2 times the scene trace (rotation invariant)
    at_full_confidence = pose_covariance(calibration, 1.0, alignment, inflation)
    assert math.isclose(np.trace(at_full_confidence[:3, :3]),
                        alignment.scale ** 2 * np.trace(calibration[:3, :3]),
                        rel_tol=1e-9, abs_tol=1e-9)


@PROPERTY_SETTINGS
@given(transforms, transforms, st.floats(0.0, 1.0))
def test_interpolation_stays_on_the_shortest_arc(start, end, fraction):
    between = start.interpolate(end, fraction)
    total = start.rotation_angle_to(end)
    assert math.isclose(start.rotation_angle_to(between), fraction * total, abs_tol=1e-7)
    assert math.isclose(between.rotation_angle_to(end), (1.0 - fraction) * total, abs_tol=1e-7)
    expected = (1.0 - fraction) * start.translation + fraction * end.translation
    np.testing.assert_allclose(between.translation, expected, atol=1e-9)


# ---------------------------------------------------------------- one quaternion convention

@PROPERTY_SETTINGS
@given(quaternions, nonzero_factors)
def test_canonical_quaternion_is_the_unit_w_positive_representative(quaternion, factor):
    canonical = canonical_quaternion(factor * quaternion)
    assert math.isclose(np.linalg.norm(canonical), 1.0, abs_tol=1e-12)
    assert is_canonical(canonical)
    # the same rotation as the input, whatever its scale and sign
    assert Rotation.from_quat(canonical).approx_equal(Rotation.from_quat(quaternion), atol=1e-9)
    # scipy's own canonical form, so quaternions we compute and scipy returns agree
    np.testing.assert_allclose(canonical, Rotation.from_quat(quaternion).as_quat(canonical=True),
                               atol=1e-12)
    # idempotent (up to the rounding of renormalising), and q and -q land on one representative
    np.testing.assert_allclose(canonical_quaternion(canonical), canonical, rtol=0, atol=1e-15)
    np.testing.assert_allclose(canonical_quaternion(-quaternion), canonical, atol=1e-12)


@PROPERTY_SETTINGS
@given(st.lists(quaternions, min_size=1, max_size=8))
def test_vectorised_canonical_quaternions_match_one_at_a_time(rows):
    batch = canonical_quaternions(np.array(rows))
    assert batch.shape == (len(rows), 4)
    for row, canonical in zip(rows, batch):
        np.testing.assert_array_equal(canonical, canonical_quaternion(row))
    np.testing.assert_allclose(quaternion_from_rotation(Rotation.from_quat(batch)), batch,
                               rtol=0, atol=1e-15)


# ---------------------------------------------------------------- the one slerp

@PROPERTY_SETTINGS
@given(transforms, transforms)
def test_slerp_hits_both_endpoints(start, end):
    for fraction, expected in ((0.0, start), (1.0, end)):
        translations, quats = slerp_poses(start.translation, start.rotation, end.translation,
                                          end.rotation, [fraction])
        assert Transform(translations[0], quats[0]).almost_equal(expected, 1e-9, 1e-7)
        assert is_canonical(quats[0])


@PROPERTY_SETTINGS
@given(transforms, transforms, st.floats(0.0, 1.0), st.booleans(), st.booleans())
def test_slerp_ignores_quaternion_signs_and_matches_transform_interpolate(
        start, end, fraction, flip_start, flip_end):
    signed_start = -start.rotation if flip_start else start.rotation
    signed_end = -end.rotation if flip_end else end.rotation
    translations, quats = slerp_poses(start.translation, signed_start, end.translation,
                                      signed_end, [fraction])
    # q and -q give the same pose, bit for bit, once canonical
    reference = slerp_poses(start.translation, start.rotation, end.translation, end.rotation,
                            [fraction])
    np.testing.assert_allclose(quats, reference[1], atol=1e-12)
    # Transform.interpolate is the same implementation
    between = start.interpolate(end, fraction)
    np.testing.assert_array_equal(between.translation, translations[0])
    np.testing.assert_allclose(between.rotation, quats[0], atol=1e-15)


@PROPERTY_SETTINGS
@given(transforms, transforms, st.floats(0.0, 1.0), st.floats(0.0, 1.0))
def test_slerp_turns_at_constant_rate_along_the_shortest_arc(start, end, first, second):
    total = start.rotation_angle_to(end)
    assert total <= math.pi + 1e-12
    _, quats = slerp_poses(np.zeros((2, 3)), [start.rotation] * 2, np.zeros((2, 3)),
                           [end.rotation] * 2, [first, second])
    angle = Rotation.from_quat(quats[0]).inv() * Rotation.from_quat(quats[1])
    assert math.isclose(angle.magnitude(), abs(second - first) * total, abs_tol=1e-7)


@PROPERTY_SETTINGS
@given(st.lists(st.floats(-math.pi, math.pi), min_size=2, max_size=5),
       st.lists(st.booleans(), min_size=5, max_size=5), st.floats(0.0, 1.0))
def test_trajectory_and_transform_interpolation_are_one_implementation(yaws, flips, fraction):
    quats = [(-1.0 if flip else 1.0) * Rotation.from_euler('xz', [0.3, yaw]).as_quat()
             for yaw, flip in zip(yaws, flips)]
    positions = np.arange(3.0 * len(yaws)).reshape(-1, 3)
    stamps = 1000 * np.arange(len(yaws))
    trajectory = Trajectory(stamps, positions, quats, 'map')
    query = int(round(fraction * 1000))
    got_positions, got_quats, valid = trajectory.interpolate([query], max_gap_ns=None)
    expected = Transform(positions[0], quats[0]).interpolate(Transform(positions[1], quats[1]),
                                                             query / 1000)
    assert valid.all() and got_quats[0][3] >= 0.0
    np.testing.assert_allclose(got_positions[0], expected.translation, rtol=0, atol=1e-12)
    np.testing.assert_allclose(got_quats[0], expected.rotation, rtol=0, atol=1e-12)
