"""The AMCL seeding rules and state machine (mspr_ros.estimation.amcl_seed, amcl_seeder).

Over DDS with a fake AMCL: test_amcl_seed.py.
"""
import math

import numpy as np
import pytest

from mspr_ros.estimation.amcl_seed import AmclSeedPolicy, is_tighter, PlanarEstimate
from mspr_ros.estimation.amcl_seed import seed_distance, seed_took, TOOK_GATE
from mspr_ros.estimation.amcl_seeder import AmclSeeder

SECOND = 1_000_000_000
POLICY = AmclSeedPolicy(position_stddev_m=0.5, yaw_stddev_rad=0.35, min_interval_s=10.0,
                        retry_period_s=1.0, max_attempts=3)


def _cov(sx, sy=None, syaw=0.1, sxy=0.0):
    sy = sx if sy is None else sy
    return np.array([[sx ** 2, sxy, 0.0], [sxy, sy ** 2, 0.0], [0.0, 0.0, syaw ** 2]])


def _estimate(x=0.0, y=0.0, yaw=0.0, sx=0.5, syaw=None, stamp=0):
    """Return a pose whose yaw spread follows its position spread (1 m : 0.2 rad) unless given."""
    return PlanarEstimate(x, y, yaw, _cov(sx, syaw=sx / 5.0 if syaw is None else syaw), stamp)


# --- the tighter rule -------------------------------------------------------------------------

def test_tighter_means_smaller_in_every_direction():
    assert is_tighter(_cov(0.5, syaw=0.1), _cov(2.0, syaw=0.5))
    assert not is_tighter(_cov(0.5), _cov(0.5)), 'equal is not tighter'
    assert not is_tighter(_cov(2.0), _cov(0.5)), 'looser'
    # Much tighter in position, looser in yaw: a determinant would seed and lose AMCL's yaw.
    ours, amcl = _cov(0.1, syaw=0.3), _cov(2.0, syaw=0.1)
    assert np.linalg.det(ours) < np.linalg.det(amcl)
    assert not is_tighter(ours, amcl)
    # AMCL's cloud stretched along a diagonal corridor: wide along it, 0.1 m across it. Each of
    # our x, y stddevs (0.5 m) is below AMCL's (0.72 m), yet across the corridor ours is looser.
    along, across = 1.0, 0.1
    rotation = np.array([[1.0, -1.0], [1.0, 1.0]]) / math.sqrt(2.0)
    corridor = np.zeros((3, 3))
    corridor[:2, :2] = rotation @ np.diag([along ** 2, across ** 2]) @ rotation.T
    corridor[2, 2] = 0.5 ** 2
    ours = _cov(0.5, syaw=0.1)
    assert np.all(np.sqrt(np.diag(ours)) < np.sqrt(np.diag(corridor)))
    assert not is_tighter(ours, corridor)


def test_tighter_does_not_depend_on_units():
    """Yaw in degrees instead of radians (any linear change of coordinates): same answer."""
    to_degrees = np.diag([1.0, 1.0, 180.0 / math.pi])
    cases = [(_cov(0.5, syaw=0.1), _cov(2.0, syaw=0.5)), (_cov(0.1, syaw=0.3), _cov(2.0))]
    for ours, amcl in cases:
        assert is_tighter(ours, amcl) == is_tighter(
            to_degrees @ ours @ to_degrees, to_degrees @ amcl @ to_degrees)


def test_first_seed_goes_out_only_when_tighter_than_amcl():
    pose = _estimate(1.0, 2.0, sx=0.5, stamp=10 * SECOND)
    # AMCL not heard yet: allowed.
    seeder = AmclSeeder(POLICY)
    seeder.arm()
    assert seeder.pose_published(pose, 'msg', True, 10 * SECOND).send == 'msg'
    assert seeder.state == 'waiting'
    # AMCL tracking at 0.2 m: a 0.5 m seed would reset it to worse; declined, once.
    seeder = AmclSeeder(POLICY)
    seeder.amcl_reported(_estimate(sx=0.2, stamp=9 * SECOND), 9 * SECOND)
    seeder.arm()
    step = seeder.pose_published(pose, 'msg', True, 10 * SECOND)
    assert step.send is None and seeder.state == 'declined'
    assert 'x 0.200 m' in step.note.text and 'x 0.500 m' in step.note.text
    assert seeder.pose_published(pose, 'msg', True, 11 * SECOND).send is None
    # An explicit relocalization request forces it.
    seeder.arm(force=True)
    assert seeder.pose_published(pose, 'msg2', True, 12 * SECOND).send == 'msg2'
    assert 'forced' in seeder.status().detail
    # A lost AMCL (2 m): our 0.5 m pose is tighter.
    seeder = AmclSeeder(POLICY)
    seeder.amcl_reported(_estimate(sx=2.0, syaw=0.5, stamp=9 * SECOND), 9 * SECOND)
    assert seeder.state == 'armed'  # lost: armed for the next pose
    assert seeder.pose_published(pose, 'msg', False, 10 * SECOND).send == 'msg'


def test_relocalization_arm_waits_for_a_relocalized_pose():
    seeder = AmclSeeder(POLICY)
    seeder.arm()
    assert seeder.pose_published(_estimate(), 'a', False, SECOND).send is None
    assert seeder.state == 'armed'
    assert seeder.pose_published(_estimate(), 'b', True, 2 * SECOND).send == 'b'


def test_lost_amcl_arms_once_per_min_interval_and_not_when_it_recovers():
    seeder = AmclSeeder(POLICY)
    lost = _estimate(sx=2.0, stamp=SECOND)
    note = seeder.amcl_reported(lost, SECOND).note
    assert 'position stddev 2.00 m' in note.text and 'seeding it with the next pose' in note.text
    # AMCL recovers by itself before a pose came: nothing to seed.
    seeder.amcl_reported(_estimate(sx=0.1, stamp=2 * SECOND), 2 * SECOND)
    assert seeder.state == 'idle'
    assert seeder.pose_published(_estimate(sx=0.05), 'p', False, 3 * SECOND).send is None
    # Lost again: the next pose seeds; AMCL then takes it.
    seeder.amcl_reported(lost, 4 * SECOND)
    assert seeder.pose_published(_estimate(sx=0.05), 'p', False, 5 * SECOND).send == 'p'
    seeder.amcl_reported(_estimate(sx=0.05, stamp=6 * SECOND), 6 * SECOND)
    assert seeder.state == 'took'
    # Lost again within min_interval (10 s) of the send: no new seed; after it: yes.
    assert seeder.amcl_reported(_estimate(sx=2.0, stamp=7 * SECOND), 7 * SECOND).note is None
    assert seeder.pose_published(_estimate(sx=0.05), 'q', False, 8 * SECOND).send is None
    seeder.amcl_reported(_estimate(sx=2.0, stamp=16 * SECOND), 16 * SECOND)
    assert seeder.pose_published(_estimate(sx=0.05), 'r', False, 16 * SECOND).send == 'r'


def test_lost_amcl_and_a_looser_pose_waits_for_a_tighter_one():
    seeder = AmclSeeder(POLICY)
    seeder.amcl_reported(_estimate(sx=1.0, stamp=SECOND), SECOND)
    assert seeder.pose_published(_estimate(sx=3.0), 'loose', False, 2 * SECOND).send is None
    assert seeder.state == 'declined'
    seeder.amcl_reported(_estimate(sx=1.0, stamp=3 * SECOND), 3 * SECOND)  # still lost
    assert seeder.pose_published(_estimate(sx=0.3), 'tight', False, 4 * SECOND).send == 'tight'


# --- did the seed take ------------------------------------------------------------------------

def test_took_needs_the_seeds_place_a_comparable_spread_and_a_later_stamp():
    seed = _estimate(1.0, 2.0, 0.3, sx=0.5, syaw=0.1, stamp=10 * SECOND)
    assert seed_took(seed, _estimate(1.2, 2.1, 0.35, sx=0.5, syaw=0.1))
    assert not seed_took(seed, _estimate(4.0, 2.0, 0.3, sx=0.5, syaw=0.1)), '6 sigma away'
    assert not seed_took(seed, _estimate(1.0, 2.0, 0.3 + 0.5, sx=0.5, syaw=0.1)), 'yaw 5 sigma'
    # A lost cloud that happens to centre near the seed did not take it.
    assert not seed_took(seed, _estimate(1.0, 2.0, 0.3, sx=5.0, syaw=1.0))
    # Yaw wraps: -pi + e is next to pi - e.
    assert seed_took(_estimate(yaw=math.pi - 0.01), _estimate(yaw=-math.pi + 0.01))
    # In the seeder: only an amcl_pose stamped at or after the first send counts.
    seeder = AmclSeeder(POLICY)
    seeder.arm()
    seeder.pose_published(seed, 'seed', True, 20 * SECOND)
    seeder.amcl_reported(_estimate(1.0, 2.0, 0.3, stamp=19 * SECOND), 20 * SECOND)
    assert seeder.state == 'waiting'
    seeder.amcl_reported(_estimate(1.0, 2.0, 0.3, stamp=20 * SECOND), 20 * SECOND)
    assert seeder.state == 'took' and '0.00 sigma' in seeder.status().detail


def test_took_follows_the_robot_by_odometry():
    """The seed at (0, 0) facing +y, the robot drove 3 m forward before AMCL's next scan."""
    seed = PlanarEstimate(0.0, 0.0, math.pi / 2, _cov(0.2, syaw=0.05), 0)
    amcl = PlanarEstimate(0.0, 3.0, math.pi / 2, _cov(0.2, syaw=0.05), 2 * SECOND)
    assert not seed_took(seed, amcl), 'without odometry the robot is 15 sigma off'
    assert seed_took(seed, amcl, motion=(3.0, 0.0, 0.0))
    # The seed's yaw uncertainty swings the moved position: 0.05 rad over 3 m is 0.15 m.
    sideways = PlanarEstimate(0.45, 3.0, math.pi / 2, _cov(0.2, syaw=0.05), 2 * SECOND)
    assert seed_distance(seed, sideways, (3.0, 0.0, 0.0)) < TOOK_GATE
    # The seeder takes the motion only for the seed it was looked up for. (AMCL a little looser
    # than the seed, as after its motion updates: not at the seed, it is no reason to stop.)
    amcl = PlanarEstimate(0.0, 3.0, math.pi / 2, _cov(0.25, syaw=0.06), 2 * SECOND)
    seeder = AmclSeeder(POLICY)
    seeder.arm()
    seeder.pose_published(seed, 'seed', True, 0)
    assert seeder.reference_stamp_ns == 0
    seeder.amcl_reported(amcl, SECOND, (3.0, 0.0, 0.0), motion_from_ns=123)
    assert seeder.state == 'waiting'
    seeder.amcl_reported(amcl, SECOND, (3.0, 0.0, 0.0), motion_from_ns=0)
    assert seeder.state == 'took'


# --- re-sends and giving up -------------------------------------------------------------------

def test_resends_the_newest_pose_every_period_then_gives_up():
    seeder = AmclSeeder(POLICY)  # 1 s period, 3 sends in all
    seeder.amcl_reported(_estimate(sx=3.0, stamp=0), 0)
    seeder.arm()
    assert seeder.pose_published(_estimate(1.0, sx=0.5, stamp=SECOND), 'p1', True,
                                 SECOND).send == 'p1'
    assert seeder.tick(SECOND + SECOND // 2).send is None, 'not due'
    seeder.pose_published(_estimate(1.1, sx=0.5, stamp=SECOND + SECOND // 2), 'p2', False,
                          SECOND + SECOND // 2)
    assert seeder.tick(2 * SECOND).send == 'p2', 'the newest pose'
    assert seeder.status().attempts == 2 and seeder.reference_stamp_ns == SECOND + SECOND // 2
    assert seeder.tick(3 * SECOND).send == 'p2', 'no newer pose: the same message again'
    assert seeder.status().attempts == 3
    assert seeder.tick(3 * SECOND + SECOND // 2).send is None
    step = seeder.tick(4 * SECOND)
    assert step.send is None and step.note.level == 'warn'
    assert seeder.state == 'gave_up' and 'after 3 send(s) over 3.0 s' in step.note.text
    status = seeder.status()
    assert status.warning == status.detail != ''
    assert dict(status.key_values())['amcl seed attempts'] == '3/3'
    assert seeder.tick(10 * SECOND).send is None, 'given up stays given up'


def test_resends_stop_when_it_took_or_amcl_is_confident_elsewhere():
    seeder = AmclSeeder(POLICY)
    seeder.arm()
    seeder.pose_published(_estimate(1.0, sx=0.5, stamp=SECOND), 'p', True, SECOND)
    note = seeder.amcl_reported(_estimate(9.0, sx=3.0, stamp=2 * SECOND), 2 * SECOND).note
    assert 'seeding it with the next pose' in note.text and '1/3 sent' in note.text, 'lost'
    assert seeder.tick(2 * SECOND).send == 'p'
    seeder.amcl_reported(_estimate(1.1, sx=0.4, stamp=3 * SECOND), 3 * SECOND)
    assert seeder.state == 'took'
    assert seeder.tick(5 * SECOND).send is None
    # AMCL converged to 0.1 m elsewhere: re-sending our 0.5 m pose would make it worse.
    seeder = AmclSeeder(POLICY)
    seeder.arm()
    seeder.pose_published(_estimate(1.0, sx=0.5, stamp=SECOND), 'p', True, SECOND)
    seeder.amcl_reported(_estimate(9.0, sx=0.1, stamp=2 * SECOND), 2 * SECOND)
    assert seeder.state == 'declined' and seeder.tick(3 * SECOND).send is None
    # ... unless the seed was forced.
    seeder = AmclSeeder(POLICY)
    seeder.arm(force=True)
    seeder.pose_published(_estimate(1.0, sx=0.5, stamp=SECOND), 'p', True, SECOND)
    seeder.amcl_reported(_estimate(9.0, sx=0.1, stamp=2 * SECOND), 2 * SECOND)
    assert seeder.state == 'waiting' and seeder.tick(2 * SECOND).send == 'p'


def test_a_resend_follows_the_tighter_rule_too():
    seeder = AmclSeeder(POLICY)
    seeder.amcl_reported(_estimate(sx=1.0, stamp=0), 0)
    seeder.arm()
    seeder.pose_published(_estimate(sx=0.5, stamp=SECOND), 'tight', True, SECOND)
    seeder.pose_published(_estimate(sx=2.0, stamp=SECOND), 'loose', False, SECOND)
    assert seeder.tick(2 * SECOND).send is None and seeder.state == 'declined'


def test_a_new_relocalization_starts_a_new_seed():
    seeder = AmclSeeder(POLICY)
    seeder.arm()
    seeder.pose_published(_estimate(stamp=SECOND), 'a', True, SECOND)
    seeder.tick(2 * SECOND)
    seeder.arm()
    assert seeder.pose_published(_estimate(stamp=2 * SECOND), 'b', True,
                                 2 * SECOND + 1).send == 'b'
    assert seeder.status().attempts == 1


# --- clock jumps ------------------------------------------------------------------------------

def test_reset_time_cancels_the_seed_in_flight_and_restarts_the_clocks():
    seeder = AmclSeeder(POLICY)
    seeder.amcl_reported(_estimate(sx=2.0, stamp=100 * SECOND), 100 * SECOND)
    seeder.pose_published(_estimate(sx=0.5, stamp=100 * SECOND), 'p', False, 100 * SECOND)
    assert seeder.state == 'waiting'
    seeder.reset_time()  # a bag loop: the clock is back at 5 s
    assert seeder.state == 'cancelled' and seeder.tick(6 * SECOND).send is None
    assert dict(seeder.status().key_values())['amcl seed last sent'] == 'never'
    assert dict(seeder.status().key_values())['amcl pose stddev'] == 'not heard'
    # min_interval counts from a send in the new time line, not from 100 s: lost arms now.
    seeder.amcl_reported(_estimate(sx=2.0, stamp=6 * SECOND), 6 * SECOND)
    assert seeder.state == 'armed'
    assert seeder.pose_published(_estimate(sx=0.5, stamp=7 * SECOND), 'q', False,
                                 7 * SECOND).send == 'q'


def test_a_clock_that_went_back_without_reset_time_does_not_freeze_the_resends():
    seeder = AmclSeeder(POLICY)
    seeder.arm()
    seeder.pose_published(_estimate(stamp=100 * SECOND), 'p', True, 100 * SECOND)
    assert seeder.tick(5 * SECOND).send is None  # restarts the period at 5 s
    assert seeder.tick(6 * SECOND).send == 'p'


# --- inputs -----------------------------------------------------------------------------------

def test_bad_values_are_refused_with_a_message():
    with pytest.raises(ValueError, match='retry_period_s'):
        AmclSeedPolicy(retry_period_s=0.0)
    for attempts in (0, 1.5, True):
        with pytest.raises(ValueError, match='max_attempts'):
            AmclSeedPolicy(max_attempts=attempts)
    with pytest.raises(ValueError, match='3x3'):
        PlanarEstimate(0.0, 0.0, 0.0, np.eye(2), 0)
    with pytest.raises(ValueError, match='semi-definite'):
        PlanarEstimate(0.0, 0.0, 0.0, -np.eye(3), 0)
    with pytest.raises(ValueError, match='finite'):
        PlanarEstimate(math.nan, 0.0, 0.0, np.eye(3), 0)
    with pytest.raises(ValueError, match='6x6'):
        PlanarEstimate.from_pose(0.0, 0.0, 0.0, np.eye(3), 0)
    six = np.diag([0.25, 0.36, 1e3, 1e3, 1e3, 0.01])
    assert np.allclose(PlanarEstimate.from_pose(0, 0, 0, six, 0).stddevs(), (0.5, 0.6, 0.1))


def test_diagnostics_carry_the_seeding_state_and_warn_when_it_gave_up():
    from mspr_ros.ros.diagnostics import build_status, LocalizationStats, NodeInfo
    stats = LocalizationStats(clock=lambda: 100.0)
    info = NodeInfo(node_name='n', lifecycle_state='active', input_topic='/image')
    stats.image_received(superseded_unprocessed=False)
    stats.scene_seen('lab', 0.9)
    stats.pose_published(1)
    seeder = AmclSeeder(POLICY)
    stats.amcl_seed(seeder.status().key_values(), seeder.status().warning)
    status = build_status(info, stats.snapshot())
    values = {kv.key: kv.value for kv in status.values}
    assert status.level == b'\x00' and values['amcl seed'] == 'idle'
    assert values['amcl seed attempts'] == '0/3' and values['amcl seed last sent'] == 'never'
    seeder.arm()
    seeder.pose_published(_estimate(stamp=SECOND), 'p', True, SECOND)
    for second in (2, 3, 4):
        seeder.tick(second * SECOND)
    stats.amcl_seed(seeder.status().key_values(), seeder.status().warning)
    status = build_status(info, stats.snapshot())
    values = {kv.key: kv.value for kv in status.values}
    assert values['amcl seed'] == 'gave_up' and values['amcl seed last sent'] == '3.000000000'
    assert status.level == b'\x01' and status.message.startswith('localized in lab; AMCL did not')


def test_without_amcl_pose_a_seed_goes_out_once():
    """Nothing would show that it took; a re-send would reset AMCL's cloud once more."""
    seeder = AmclSeeder(POLICY, watch_amcl=False)
    seeder.arm()
    assert seeder.pose_published(_estimate(stamp=SECOND), 'p', True, SECOND).send == 'p'
    assert seeder.state == 'sent' and 'no amcl_pose topic' in seeder.status().detail
    assert seeder.tick(5 * SECOND).send is None
