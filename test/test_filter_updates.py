"""The thinned per-frame stream a Kalman filter gets (``~/pose_update``), without ROS.

``mspr_ros.estimation.filter_updates``: a still robot sends one update; a moving one sends one
each time the view moved far enough for the scene's error-correlation model; the covariance is
inflated by the AR(1) design effect of the correlation left; a scene sends its first frame at
once; a scene without a learned model (floor 1) sends nothing; a reset starts afresh.
"""
from dataclasses import replace
import math

import numpy as np
import pytest

from mspr_ros.estimation.error_correlation import ErrorCorrelation
from mspr_ros.estimation.filter_updates import CORRELATED, DECORRELATED, FilterUpdates, FIRST
from mspr_ros.estimation.filter_updates import inflation, NO_MODEL, STALE
from mspr_ros.geometry.transforms import Transform

COVARIANCE = np.diag([0.04, 0.09, 0.01, 0.002, 0.003, 0.05])
PERIOD_NS = 100_000_000  # 10 Hz
# Decorrelates over 1 m of travel only: neither rotation nor time makes a frame new.
BY_DISTANCE = ErrorCorrelation(length_m=1.0, angle_rad=math.inf, time_s=math.inf, floor=0.0,
                               source='bundle')


def _odometry(x=0.0, yaw=0.0):
    return Transform.from_xyz_rpy([x, 0.0, 0.0], [0.0, 0.0, yaw])


def _sent(updates, scene, poses, first_stamp_ns=0):
    """Offer one frame per pose, PERIOD_NS apart; return the indices that were sent."""
    decisions = [updates.offer(scene, first_stamp_ns + i * PERIOD_NS, pose, COVARIANCE)
                 for i, pose in enumerate(poses)]
    return [i for i, decision in enumerate(decisions) if decision.publish], decisions


def test_a_still_robot_sends_one_update():
    updates = FilterUpdates({'lab': BY_DISTANCE}, ErrorCorrelation.one_frame())
    sent, decisions = _sent(updates, 'lab', [_odometry()] * 300)
    assert sent == [0]
    assert decisions[0].reason == FIRST and decisions[0].correlation == 0.0
    np.testing.assert_array_equal(decisions[0].covariance, COVARIANCE)
    assert {d.reason for d in decisions[1:]} == {CORRELATED}
    assert all(d.covariance is None for d in decisions[1:])
    assert 'error correlation 1.00 > 0.50' in decisions[1].detail


@pytest.mark.parametrize('model, pose, step, expected_every', [
    # exp(-d / 1 m) <= 0.5 from d = ln 2 = 0.693 m: every 7th frame at 0.1 m a frame.
    (BY_DISTANCE, lambda i: _odometry(x=0.1 * i), None, 7),
    # exp(-a / 0.5 rad) <= 0.5 from a = 0.347 rad: every 7th frame at 0.05 rad a frame.
    (ErrorCorrelation(math.inf, 0.5, math.inf, 0.0, 'bundle'),
     lambda i: _odometry(yaw=0.05 * i), None, 7),
    # The time model (fusion.error_correlation 'time', 2 s) on a still robot: every 1.39 s.
    (ErrorCorrelation.from_time(2.0), lambda i: _odometry(), None, 14),
])
def test_a_moving_view_sends_at_the_spacing_of_the_model(model, pose, step, expected_every):
    updates = FilterUpdates({'lab': model}, ErrorCorrelation.one_frame())
    sent, decisions = _sent(updates, 'lab', [pose(i) for i in range(50)])
    assert sent == list(range(0, 50, expected_every))
    assert all(decisions[i].reason == DECORRELATED for i in sent[1:])


def test_the_covariance_is_inflated_by_the_correlation_left():
    model = ErrorCorrelation(1.0, math.inf, math.inf, floor=0.2, source='bundle')
    updates = FilterUpdates({'lab': model}, ErrorCorrelation.one_frame())
    updates.offer('lab', 0, _odometry(), COVARIANCE)
    # At 0.5 m the decaying part exp(-0.5) = 0.61 is above 0.5: held back.
    assert not updates.offer('lab', PERIOD_NS, _odometry(x=0.5), COVARIANCE).publish
    # At 1 m it is exp(-1) = 0.37: sent, rho = 0.2 + 0.8 * 0.37 = 0.494, factor 2.95.
    decision = updates.offer('lab', 2 * PERIOD_NS, _odometry(x=1.0), COVARIANCE)
    rho = 0.2 + 0.8 * math.exp(-1.0)
    assert decision.publish and decision.correlation == pytest.approx(rho)
    np.testing.assert_allclose(decision.covariance, COVARIANCE * (1 + rho) / (1 - rho))
    assert inflation(rho) == pytest.approx(2.955, abs=1e-3)
    assert 'covariance x 2.95' in decision.detail
    # The next one is measured from the frame sent, not from the one held back.
    assert not updates.offer('lab', 3 * PERIOD_NS, _odometry(x=1.5), COVARIANCE).publish


def test_another_scene_sends_its_own_first_frame():
    updates = FilterUpdates({'lab': BY_DISTANCE, 'atrium': BY_DISTANCE},
                            ErrorCorrelation.one_frame())
    still = _odometry()
    assert updates.offer('lab', 0, still, COVARIANCE).publish
    assert not updates.offer('lab', PERIOD_NS, still, COVARIANCE).publish
    atrium = updates.offer('atrium', 2 * PERIOD_NS, still, COVARIANCE)
    assert atrium.publish and atrium.reason == FIRST
    # Back to the lab at the same view: its error is the lab frame's again.
    assert not updates.offer('lab', 3 * PERIOD_NS, still, COVARIANCE).publish


def test_a_scene_without_a_learned_model_sends_nothing():
    updates = FilterUpdates({'lab': BY_DISTANCE}, ErrorCorrelation.one_frame())
    assert updates.silent_scenes(['lab', 'atrium']) == ['atrium']
    sent, decisions = _sent(updates, 'atrium', [_odometry(x=float(i)) for i in range(20)])
    assert sent == [] and {d.reason for d in decisions} == {NO_MODEL}
    assert 'no learned error correlation for scene atrium (one_frame)' in decisions[0].detail
    assert 'count one view many times' in decisions[0].detail
    # A reset does not change that.
    updates.reset()
    assert not updates.offer('atrium', 10 ** 10, _odometry(), COVARIANCE).publish


def test_independent_frames_are_all_sent_as_they_are():
    updates = FilterUpdates({'lab': ErrorCorrelation.independent()},
                            ErrorCorrelation.one_frame())
    sent, decisions = _sent(updates, 'lab', [_odometry()] * 10)
    assert sent == list(range(10))
    for decision in decisions:
        np.testing.assert_array_equal(decision.covariance, COVARIANCE)


def test_reset_and_new_settings_start_afresh():
    updates = FilterUpdates({'lab': BY_DISTANCE}, ErrorCorrelation.one_frame())
    still = _odometry()
    assert updates.offer('lab', 0, still, COVARIANCE).publish
    assert not updates.offer('lab', PERIOD_NS, still, COVARIANCE).publish
    updates.reset()
    assert updates.offer('lab', 2 * PERIOD_NS, still, COVARIANCE).reason == FIRST
    assert not updates.configure({'lab': BY_DISTANCE}, ErrorCorrelation.one_frame(), 0.5)
    assert not updates.offer('lab', 3 * PERIOD_NS, still, COVARIANCE).publish
    assert updates.configure({'lab': BY_DISTANCE}, ErrorCorrelation.one_frame(), 0.9)
    assert updates.offer('lab', 4 * PERIOD_NS, still, COVARIANCE).reason == FIRST
    # An older stamp than the last update of its scene is held back.
    assert updates.offer('lab', 0, _odometry(x=5.0), COVARIANCE).reason == STALE
    with pytest.raises(ValueError, match='max_correlation'):
        FilterUpdates({}, ErrorCorrelation.one_frame(), 1.0)


def test_a_per_block_model_waits_for_the_block_that_is_more_alike():
    """Rotation errors new on every frame, position ones alike over 1 m: position decides.

    The joint model's fields are position's; a per-block model sends a frame only when both
    blocks decorrelated, and inflates by the larger rho. A rotation block with floor 1 (every
    frame alike) sends nothing after the first.
    """
    fresh = ErrorCorrelation(0.0, 0.0, 0.0, 0.0, 'bundle')
    model = ErrorCorrelation(1.0, math.inf, math.inf, 0.0, 'bundle', rotation=fresh)
    updates = FilterUpdates({'lab': model}, ErrorCorrelation.one_frame())
    sent, decisions = _sent(updates, 'lab', [_odometry(x=0.1 * i) for i in range(50)])
    assert sent == list(range(0, 50, 7)), 'position (1 m) decides, as BY_DISTANCE alone'
    rho = math.exp(-0.7)
    assert decisions[7].correlation == pytest.approx(rho)
    np.testing.assert_allclose(decisions[7].covariance, COVARIANCE * (1 + rho) / (1 - rho))
    # The other way round: position new on every frame, rotation alike over 1 m of travel.
    swapped = FilterUpdates({'lab': ErrorCorrelation(0.0, 0.0, 0.0, 0.0, 'bundle',
                                                     rotation=BY_DISTANCE)},
                            ErrorCorrelation.one_frame())
    assert _sent(swapped, 'lab', [_odometry(x=0.1 * i) for i in range(50)])[0] == sent
    stuck = FilterUpdates({'lab': replace(model, rotation=ErrorCorrelation.one_frame())},
                          ErrorCorrelation.one_frame())
    assert stuck.silent_scenes(["lab"]) == ["lab"]
    sent, decisions = _sent(stuck, 'lab', [_odometry(x=0.1 * i) for i in range(20)])
    assert sent == [] and decisions[0].reason == NO_MODEL
