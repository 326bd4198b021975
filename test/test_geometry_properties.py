"""Property-based tests (hypothesis) of the frame maths and the covariance."""
import math

from hypothesis import given, settings, strategies as st
import numpy as np

from mspr_ros.geometry.covariance import pose_covariance, two_d_covariance
from mspr_ros.geometry.transforms import map_to_odom, pose_error, SceneAlignment, Transform

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
