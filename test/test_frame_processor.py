"""Unit tests of the node's ROS-free per-frame decisions (mspr_ros.estimation).

``FrameProcessor``: the frame chain map <- scene <- camera, base removal, map -> odom,
covariance, gating outcomes and ``two_d_mode``; ``InitialPoseGuard``; the TF stamping rule
``MapOdomStamps``. Expected values are built in 4x4 matrices with scipy, not with the code under
test.
"""
import math

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from mspr_ros.estimation.frame_processor import CovarianceSettings, FrameProcessor
from mspr_ros.estimation.frame_processor import NonFiniteEstimate, ProcessorSettings
from mspr_ros.estimation.gating import GateConfig, JUMP_TRANSLATION, LOW_CONFIDENCE
from mspr_ros.estimation.initial_pose import INITIAL_POSE, InitialPoseGuard
from mspr_ros.estimation.tf_stamping import MapOdomStamps
from mspr_ros.geometry.tf_history import TransformBuffer
from mspr_ros.geometry.transforms import SceneAlignment, Transform

ALIGNMENT = {'translation': [5.0, -3.0, 0.2],
             'rotation_xyzw': Rotation.from_euler('zyx', [30, 4, -3], degrees=True).as_quat(),
             'scale': 1.5}
CALIBRATION = np.diag([0.04, 0.09, 0.01, 0.002, 0.003, 0.005])
CAM_POSITION = np.array([1.0, 2.0, 0.5])
CAM_QUAT = Rotation.from_euler('xyz', [-95, 3, -80], degrees=True).as_quat()
T_BASE_CAM = Transform.from_xyz_rpy([0.3, -0.1, 0.8], [-math.pi / 2, 0.05, -math.pi / 2])
T_ODOM_BASE = Transform.from_xyz_rpy([2.0, 1.0, 0.0], [0.0, 0.0, 0.4])


def matrix(xyz, rotation):
    m = np.eye(4)
    m[:3, :3] = rotation.as_matrix()
    m[:3, 3] = xyz
    return m


def expected_chain():
    """Return map <- cam, map <- base, map <- odom by hand (similarity then rigid inverses)."""
    r_align = Rotation.from_quat(ALIGNMENT['rotation_xyzw'])
    m_map_cam = np.eye(4)
    m_map_cam[:3, :3] = (r_align * Rotation.from_quat(CAM_QUAT)).as_matrix()
    m_map_cam[:3, 3] = ALIGNMENT['scale'] * r_align.apply(CAM_POSITION) + ALIGNMENT['translation']
    m_map_base = m_map_cam @ np.linalg.inv(T_BASE_CAM.as_matrix())
    return m_map_cam, m_map_base, m_map_base @ np.linalg.inv(T_ODOM_BASE.as_matrix())


def processor(two_d=False, gate=None, mode='calibrated', **settings):
    return FrameProcessor({'atrium': SceneAlignment.from_dict(ALIGNMENT)},
                          {'atrium': CALIBRATION},
                          ProcessorSettings(gate=gate or GateConfig(min_scene_confidence=0.5),
                                            covariance=CovarianceSettings(mode=mode),
                                            two_d_mode=two_d, **settings))


def run(proc, confidence=0.9, position=CAM_POSITION, T_odom_base=T_ODOM_BASE):
    return proc.estimate('atrium', confidence, position, CAM_QUAT, T_BASE_CAM, T_odom_base)


def test_frame_chain_removes_the_camera_extrinsic_and_odometry():
    m_map_cam, m_map_base, m_map_odom = expected_chain()
    estimate = run(processor())
    np.testing.assert_allclose(estimate.T_map_cam.as_matrix(), m_map_cam, atol=1e-9)
    np.testing.assert_allclose(estimate.T_map_base.as_matrix(), m_map_base, atol=1e-9)
    np.testing.assert_allclose(estimate.T_map_odom.as_matrix(), m_map_odom, atol=1e-9)
    # map -> odom composed with odom -> base reproduces the published base pose.
    np.testing.assert_allclose((estimate.T_map_odom @ T_ODOM_BASE).as_matrix(), m_map_base,
                               atol=1e-9)
    assert estimate.decision.accepted and estimate.relocalized
    assert estimate.scene_name == 'atrium' and estimate.scene_confidence == 0.9


def test_covariance_is_the_calibration_in_the_map_carried_to_the_base():
    m_map_cam, m_map_base, _ = expected_chain()
    r_align = Rotation.from_quat(ALIGNMENT['rotation_xyzw']).as_matrix()
    jacobian = np.zeros((6, 6))
    jacobian[:3, :3] = ALIGNMENT['scale'] * r_align
    jacobian[3:, 3:] = r_align
    in_map = jacobian @ CALIBRATION @ jacobian.T
    # A rotation error d of the camera moves the base by d x (p_base - p_cam).
    lever = m_map_base[:3, 3] - m_map_cam[:3, 3]
    skew = np.array([[0, -lever[2], lever[1]], [lever[2], 0, -lever[0]],
                     [-lever[1], lever[0], 0]])
    carry = np.eye(6)
    carry[:3, 3:] = -skew
    # confidence 0.9 with inflation 1: factor 1 + (1 - 0.9) / 0.9
    expected = (1 + 0.1 / 0.9) * carry @ in_map @ carry.T
    np.testing.assert_allclose(run(processor()).covariance, expected, rtol=1e-9, atol=1e-12)
    fixed = run(processor(mode='fixed')).covariance
    assert fixed[0, 0] > 0.5 ** 2 and fixed[5, 5] > 0.1 ** 2  # lever arm and inflation


def test_two_d_mode_zeroes_z_roll_pitch_keeps_yaw_and_flattens_covariance():
    _, m_map_base, _ = expected_chain()
    tilted_odom = Transform.from_xyz_rpy([2.0, 1.0, 0.3], [0.1, -0.05, 0.4])
    estimate = run(processor(two_d=True), T_odom_base=tilted_odom)
    for pose in (estimate.T_map_base, estimate.T_map_odom):
        assert pose.translation[2] == 0.0
        roll, pitch, _ = pose.rpy()
        assert abs(roll) < 1e-12 and abs(pitch) < 1e-12
    x_axis = m_map_base[:3, 0]
    assert estimate.T_map_base.yaw() == pytest.approx(math.atan2(x_axis[1], x_axis[0]), abs=1e-9)
    np.testing.assert_allclose(estimate.T_map_base.translation[:2], m_map_base[:2, 3], atol=1e-9)
    cov = estimate.covariance
    full = run(processor()).covariance
    kept = np.ix_([0, 1, 5], [0, 1, 5])
    np.testing.assert_allclose(cov[kept], full[kept], rtol=1e-12)
    assert np.all(np.diag(cov)[2:5] == 1e3)
    assert np.count_nonzero(cov[2:5]) == 3 and np.count_nonzero(cov[:, 2:5]) == 3


def test_gating_outcomes_confidence_jump_and_relocalization():
    proc = processor(gate=GateConfig(min_scene_confidence=0.5, max_jump_translation=1.0))
    assert run(proc, confidence=0.3).decision.reason == LOW_CONFIDENCE
    assert proc.last_map_odom is None  # a rejected frame leaves no fix behind
    first = run(proc)
    assert first.decision.accepted and first.relocalized
    # Same frame again: on the odometry prediction, accepted, no longer a relocalization.
    again = run(proc)
    assert again.decision.accepted and not again.relocalized
    # Odometry says the robot stood still, the network says it moved 3 m: a jump.
    jumped = run(proc, position=CAM_POSITION + [2.0, 0.0, 0.0])
    assert jumped.decision.reason == JUMP_TRANSLATION
    assert proc.last_map_odom.almost_equal(first.T_map_odom, 1e-12, 1e-12)
    proc.request_relocalization()
    assert proc.relocalization_pending
    relocalized = run(proc, position=CAM_POSITION + [2.0, 0.0, 0.0])
    assert relocalized.decision.accepted and relocalized.relocalized
    assert not proc.relocalization_pending


def test_non_finite_network_output_is_refused():
    with pytest.raises(NonFiniteEstimate):
        run(processor(), position=[np.nan, 0.0, 0.0])
    with pytest.raises(NonFiniteEstimate):
        run(processor(), confidence=math.nan)


def test_initial_pose_holds_until_frames_agree_elsewhere():
    proc = processor(agreement_frames=3)
    _, m_map_base, _ = expected_chain()
    far = Transform.from_matrix(m_map_base) @ Transform.from_xyz_rpy([50, 0, 0], [0, 0, 0])
    proc.set_prior(far, np.diag([0.25, 0.25, 0.01, 0.01, 0.01, 0.07]), T_ODOM_BASE)
    assert proc.relocalization_pending
    outcomes = [run(proc) for _ in range(3)]
    assert [o.decision.reason for o in outcomes[:2]] == [INITIAL_POSE, INITIAL_POSE]
    assert outcomes[2].decision.accepted and outcomes[2].relocalized
    assert not proc.relocalization_pending
    # A prior where the frames are: the first frame confirms it, not a relocalization.
    near = Transform.from_matrix(m_map_base) @ Transform.from_xyz_rpy([0.2, 0, 0], [0, 0, 0])
    proc.set_prior(near, np.diag([0.25, 0.25, 0.01, 0.01, 0.01, 0.07]), T_ODOM_BASE)
    confirmed = run(proc)
    assert confirmed.decision.accepted and not confirmed.relocalized
    # A relocalization request overrides a prior.
    proc.set_prior(far, np.eye(6) * 0.01, T_ODOM_BASE)
    proc.request_relocalization()
    assert run(proc).decision.accepted and not proc.relocalization_pending


def test_disagreeing_frames_do_not_overrule_the_initial_pose():
    guard = InitialPoseGuard(gate_mahalanobis=3.0, agreement_frames=2)
    guard.set(Transform.identity(), np.eye(6) * 0.01, Transform.identity())
    cov = np.eye(6) * 0.01
    for x in (20.0, 40.0, 60.0, 80.0):  # far from the prior and from each other
        decision, _ = guard.check(Transform.from_xyz_rpy([x, 0, 0], [0, 0, 0]), cov,
                                  Transform.identity())
        assert decision.reason == INITIAL_POSE
    # The prior is carried by odometry: 5 m driven, a frame 5 m ahead agrees with it.
    decision, overruled = guard.check(Transform.from_xyz_rpy([5.0, 0, 0], [0, 0, 0]), cov,
                                      Transform.from_xyz_rpy([5.0, 0, 0], [0, 0, 0]))
    assert decision.accepted and not overruled and not guard.active


def test_map_odom_stamps_increase_and_lookups_step_without_blending():
    stamps = MapOdomStamps(tolerance_ns=100)
    assert stamps.rebroadcast(1000) is None
    a = Transform.from_xyz_rpy([1, 0, 0], [0, 0, 0])
    b = Transform.from_xyz_rpy([0, 1, 0], [0, 0, 0.3])
    sent = stamps.accept(a, 1000)
    assert [c.stamp_ns for c in sent] == [1100]
    sent += [stamps.rebroadcast(now) for now in (1500, 1500, 1400)]  # a clock step back too
    # B's image is older than the re-broadcasts: its stamp is raised, A held up to it.
    step = stamps.accept(b, 1200)
    assert [c.transform for c in step] == [a, b]
    sent += step + [stamps.rebroadcast(2000)]
    times = [c.stamp_ns for c in sent]
    assert all(later > earlier for earlier, later in zip(times, times[1:]))
    buffer = TransformBuffer()
    for correction in sent:
        buffer.set_transform('map', 'odom', correction.stamp_ns, correction.transform)
    switch = step[1].stamp_ns
    for when in range(times[0], times[-1] + 1):
        expected = a if when < switch else b
        assert buffer.lookup('map', 'odom', when).almost_equal(expected, 1e-12, 1e-12), when


def test_initial_pose_covariance_and_settings_are_validated():
    with pytest.raises(ValueError, match='initial pose covariance'):
        InitialPoseGuard().set(Transform.identity(), np.diag([1.0] * 5 + [-1.0]),
                               Transform.identity())
    with pytest.raises(ValueError, match='gate_mahalanobis'):
        InitialPoseGuard(gate_mahalanobis=math.inf)
    with pytest.raises(ValueError, match='agreement_frames'):
        InitialPoseGuard(agreement_frames=0)
