"""Unit tests of mspr_ros.estimation.gating."""
import math
import threading

import pytest

from mspr_ros.estimation.gating import (GateConfig, GateDecision, JUMP_ROTATION, JUMP_TRANSLATION,
                                        LOW_CONFIDENCE, PoseGate, REJECTION_REASONS,
                                        SCENE_NOT_ALLOWED)
from mspr_ros.geometry.transforms import Transform

ORIGIN = Transform.from_xyz_rpy([0, 0, 0], [0, 0, 0])


def pose(x=0.0, y=0.0, yaw_deg=0.0):
    return Transform.from_xyz_rpy([x, y, 0.0], [0.0, 0.0, math.radians(yaw_deg)])


def limited_gate(**overrides):
    settings = dict(min_scene_confidence=0.6, max_jump_translation=1.0, max_jump_rotation_deg=20.0,
                    allowed_scenes=frozenset({'chess', 'fire'}))
    settings.update(overrides)
    return PoseGate(GateConfig(**settings))


def test_defaults_accept_a_confident_first_fix():
    gate = PoseGate()
    assert gate.config == GateConfig()
    decision = gate.check('anything', 0.5, pose(100, 100, 170))
    assert decision.accepted and decision.reason is None


def test_reason_names():
    assert REJECTION_REASONS == ('low_confidence', 'scene_not_allowed', 'jump_translation',
                                 'jump_rotation')


@pytest.mark.parametrize('scene, confidence, candidate, reason', [
    ('chess', 0.59, pose(), LOW_CONFIDENCE),
    ('chess', math.nan, pose(), LOW_CONFIDENCE),
    ('office', 0.99, pose(), SCENE_NOT_ALLOWED),
    ('chess', 0.99, pose(x=1.01), JUMP_TRANSLATION),
    ('chess', 0.99, pose(yaw_deg=-20.5), JUMP_ROTATION),
    ('fire', 0.6, pose(x=0.99, yaw_deg=19.5), None),
])
def test_each_rejection_reason(scene, confidence, candidate, reason):
    decision = limited_gate().check(scene, confidence, candidate, ORIGIN)
    assert decision.accepted == (reason is None)
    assert decision.reason == reason
    if reason is not None:
        assert decision.detail  # a human-readable explanation with the numbers


def test_checks_run_in_order():
    # low confidence, wrong scene and a jump at once: confidence is reported first
    gate = limited_gate()
    assert gate.check('office', 0.1, pose(x=9), ORIGIN).reason == LOW_CONFIDENCE
    assert gate.check('office', 0.9, pose(x=9), ORIGIN).reason == SCENE_NOT_ALLOWED
    assert gate.check('chess', 0.9, pose(x=9, yaw_deg=90), ORIGIN).reason == JUMP_TRANSLATION


def test_no_jump_check_without_prediction():
    decision = limited_gate().check('chess', 0.9, pose(x=50, yaw_deg=180), None)
    assert decision.accepted


def test_jump_is_measured_from_the_odometry_prediction():
    gate = limited_gate()
    t_map_odom = pose(x=10.0, yaw_deg=90.0)
    t_odom_base = pose(x=2.0)
    predicted = gate.predict(t_map_odom, t_odom_base)
    assert predicted.almost_equal(pose(x=10.0, y=2.0, yaw_deg=90.0))
    assert gate.check('chess', 0.9, pose(x=10.2, y=2.3, yaw_deg=95), predicted).accepted
    assert gate.check('chess', 0.9, pose(x=12.0, y=2.0, yaw_deg=90), predicted).reason == (
        JUMP_TRANSLATION)


def test_relocalization_skips_jump_limits_once():
    gate = limited_gate()
    far = pose(x=30.0, yaw_deg=120.0)
    assert gate.check('chess', 0.9, far, ORIGIN).reason == JUMP_TRANSLATION
    gate.request_relocalization()
    assert gate.relocalization_pending
    # a low-confidence candidate does not consume the request
    assert gate.check('chess', 0.2, far, ORIGIN).reason == LOW_CONFIDENCE
    assert gate.check('office', 0.9, far, ORIGIN).reason == SCENE_NOT_ALLOWED
    assert gate.relocalization_pending
    assert gate.check('chess', 0.9, far, ORIGIN).accepted
    assert not gate.relocalization_pending
    assert gate.check('chess', 0.9, far, ORIGIN).reason == JUMP_TRANSLATION


def test_reset_clears_a_relocalization_request():
    gate = limited_gate()
    gate.request_relocalization()
    gate.reset()
    assert not gate.relocalization_pending
    assert gate.check('chess', 0.9, pose(x=30.0), ORIGIN).reason == JUMP_TRANSLATION


@pytest.mark.parametrize('overrides, message', [
    ({'min_scene_confidence': 1.5}, 'min_scene_confidence'),
    ({'min_scene_confidence': math.nan}, 'min_scene_confidence'),
    ({'max_jump_translation': 0.0}, 'max_jump_translation'),
    ({'max_jump_rotation_deg': -5.0}, 'max_jump_rotation_deg'),
    ({'max_jump_rotation_deg': math.nan}, 'max_jump_rotation_deg'),
    ({'allowed_scenes': 'chess'}, 'string'),
    ({'allowed_scenes': {''}}, 'non-empty strings'),
])
def test_config_validation(overrides, message):
    with pytest.raises(ValueError, match=message):
        GateConfig(**overrides)


def test_config_normalises_allowed_scenes():
    config = GateConfig(allowed_scenes=['chess', 'fire', 'chess'])
    assert config.allowed_scenes == frozenset({'chess', 'fire'})
    assert GateDecision(True).reason is None


def test_concurrent_relocalization_requests_accept_exactly_one_jump():
    gate = limited_gate()
    gate.request_relocalization()
    far = pose(x=30.0)
    results = []
    barrier = threading.Barrier(8)

    def worker():
        barrier.wait(timeout=10)
        results.append(gate.check('chess', 0.9, far, ORIGIN).accepted)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert sorted(results) == [False] * 7 + [True]
