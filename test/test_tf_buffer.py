"""Unit tests of mspr_ros.geometry.tf_history.TransformBuffer."""
import math
import threading
import time

import numpy as np
import pytest

from mspr_ros.geometry.tf_history import (clean_frame_id, ConnectivityError, ExtrapolationError,
                                          FrameNotFound, TransformBuffer, TransformDataError)
from mspr_ros.geometry.transforms import Transform

S = 1_000_000_000  # nanoseconds per second


def pose(x=0.0, y=0.0, z=0.0, yaw=0.0, roll=0.0):
    return Transform.from_xyz_rpy([x, y, z], [roll, 0.0, yaw])


@pytest.fixture
def robot():
    """Build the robot's frame chain.

    map -> odom (dynamic) -> base (dynamic) -> camera_link (static) -> optical (static).
    """
    buffer = TransformBuffer()
    buffer.set_transform('map', 'odom', 0, pose(x=1.0, yaw=0.1))
    buffer.set_transform('map', 'odom', 2 * S, pose(x=1.2, yaw=0.1))
    for second in range(0, 5):
        buffer.set_transform('odom', 'base', second * S, pose(x=0.5 * second, yaw=0.2 * second))
    buffer.set_transform('base', 'camera_link', 0, pose(x=0.3, z=1.0, roll=0.05), static=True)
    buffer.set_transform('camera_link', 'optical', 0, pose(yaw=-math.pi / 2, roll=-math.pi / 2),
                         static=True)
    return buffer


def test_multi_hop_lookup_matches_hand_composition(robot):
    camera_in_base = pose(x=0.3, z=1.0, roll=0.05) @ pose(yaw=-math.pi / 2, roll=-math.pi / 2)
    at_zero = pose(x=1.0, yaw=0.1) @ pose() @ camera_in_base
    assert robot.lookup('map', 'optical', 0).almost_equal(at_zero)
    # at 1 s: map -> odom interpolated to x 1.1, odom -> base sampled at x 0.5, yaw 0.2
    at_one = pose(x=1.1, yaw=0.1) @ pose(x=0.5, yaw=0.2) @ camera_in_base
    assert robot.lookup('map', 'optical', S).almost_equal(at_one)
    assert not at_one.almost_equal(at_zero)
    # the reverse direction is the inverse
    assert robot.lookup('optical', 'map', S).almost_equal(at_one.inverse())


def test_lookup_between_branches_goes_through_the_common_ancestor(robot):
    robot.set_transform('base', 'lidar', 0, pose(x=-0.2, y=0.1, yaw=math.pi), static=True)
    expected = pose(x=-0.2, y=0.1, yaw=math.pi).inverse() @ pose(x=0.3, z=1.0, roll=0.05)
    assert robot.lookup('lidar', 'camera_link', 3 * S).almost_equal(expected)
    # between two sibling chains below odom and map, at a time inside both
    robot.set_transform('map', 'marker', 0, pose(y=4.0), static=True)
    expected = pose(y=4.0).inverse() @ pose(x=1.1, yaw=0.1) @ pose(x=0.5, yaw=0.2)
    assert robot.lookup('marker', 'base', S).almost_equal(expected)


def test_interpolation_midway(robot):
    # odom -> base halfway between 1 s and 2 s: x 0.75, yaw 0.3; map -> odom at 1.5 s: x 1.15
    expected = pose(x=1.15, yaw=0.1) @ pose(x=0.75, yaw=0.3)
    assert robot.lookup('map', 'base', 3 * S // 2).almost_equal(expected, 1e-9, 1e-9)
    quarter = robot.lookup('odom', 'base', S + S // 4)
    assert quarter.almost_equal(pose(x=0.625, yaw=0.25), 1e-9, 1e-9)


def test_latest_common_time(robot):
    # map -> odom ends at 2 s, odom -> base at 4 s: latest common time is 2 s
    assert robot.lookup('map', 'base').almost_equal(pose(x=1.2, yaw=0.1) @ pose(x=1.0, yaw=0.4))
    assert robot.lookup('odom', 'base').almost_equal(pose(x=2.0, yaw=0.8))
    # statics only: no time needed
    assert robot.lookup('base', 'optical').almost_equal(
        pose(x=0.3, z=1.0, roll=0.05) @ pose(yaw=-math.pi / 2, roll=-math.pi / 2))


def test_extrapolation_errors_name_the_edge_and_times(robot):
    with pytest.raises(ExtrapolationError, match=r"future.*'map' -> 'odom'.*2\.000000000 s"):
        robot.lookup('map', 'base', 3 * S)
    with pytest.raises(ExtrapolationError, match=r"future: requested 4\.500000000 s.*'odom' "
                                                 r"-> 'base'.*0\.000000000 s to 4\.000000000 s"):
        robot.lookup('odom', 'optical', 4 * S + S // 2)
    robot.set_transform('odom', 'wheel', 2 * S, pose(), static=False)
    with pytest.raises(ExtrapolationError, match='past'):
        robot.lookup('odom', 'wheel', S)
    # a single sample is valid at its own stamp only
    assert robot.lookup('odom', 'wheel', 2 * S).almost_equal(pose())
    assert not robot.can_transform('odom', 'wheel', 2 * S + 1)


def test_extrapolation_tolerance():
    buffer = TransformBuffer(extrapolation_tolerance_s=0.05)
    buffer.set_transform('odom', 'base', S, pose(x=1.0))
    buffer.set_transform('odom', 'base', 2 * S, pose(x=2.0))
    assert buffer.lookup('odom', 'base', 2 * S + S // 25).almost_equal(pose(x=2.0))
    assert buffer.lookup('odom', 'base', S - S // 25).almost_equal(pose(x=1.0))
    with pytest.raises(ExtrapolationError):
        buffer.lookup('odom', 'base', 2 * S + S // 10)


def test_statics_are_valid_at_all_times_and_replaceable(robot):
    for stamp in (0, 10 * S, 10**18):
        assert robot.lookup('base', 'camera_link', stamp).almost_equal(
            pose(x=0.3, z=1.0, roll=0.05))
    robot.set_transform('base', 'camera_link', 99 * S, pose(x=0.4), static=True)
    assert robot.lookup('base', 'camera_link', 0).almost_equal(pose(x=0.4))


def test_unknown_frames_and_disconnected_trees(robot):
    with pytest.raises(FrameNotFound, match=r"frame 'gps' is not in the TF tree.*known frames: "
                                            r"\[base, camera_link"):
        robot.lookup('map', 'gps', 0)
    with pytest.raises(FrameNotFound, match=r"frames \['a', 'b'\] are not in the TF tree"):
        robot.lookup('a', 'b')
    robot.set_transform('world', 'satellite', 0, pose(), static=True)
    with pytest.raises(ConnectivityError, match=r"roots 'map' and 'world'"):
        robot.lookup('optical', 'satellite', 0)
    for error in (FrameNotFound, ExtrapolationError, ConnectivityError):
        assert issubclass(error, LookupError)
    assert robot.lookup('base', 'base', 123).almost_equal(Transform.identity())
    # as tf2: a frame relative to itself needs no data
    assert TransformBuffer().lookup('camera', 'camera').almost_equal(Transform.identity())


def test_bad_transforms_are_refused(robot):
    with pytest.raises(TransformDataError, match="'base' already has parent 'odom'.*'map'"):
        robot.set_transform('map', 'base', 0, pose())
    with pytest.raises(TransformDataError, match='cycle'):
        robot.set_transform('optical', 'map', 0, pose(), static=True)
    with pytest.raises(TransformDataError, match='is static; got a dynamic'):
        robot.set_transform('base', 'camera_link', S, pose())
    with pytest.raises(TransformDataError, match='is dynamic; got a static'):
        robot.set_transform('odom', 'base', S, pose(), static=True)
    with pytest.raises(TransformDataError, match='itself'):
        robot.set_transform('base', 'base', 0, pose())
    with pytest.raises(TransformDataError, match='must not start with'):
        robot.set_transform('/map', 'x', 0, pose())
    with pytest.raises(TransformDataError, match='non-empty'):
        robot.set_transform('', 'x', 0, pose())
    with pytest.raises(TransformDataError, match='integer nanoseconds'):
        robot.set_transform('map', 'x', 1.5, pose())
    with pytest.raises(TransformDataError, match='>= 0'):
        robot.set_transform('map', 'x', -1, pose())
    with pytest.raises(TransformDataError, match='must be a Transform'):
        robot.set_transform('map', 'x', 0, 'pose')
    assert robot.parent_of('base') == 'odom'  # nothing changed


def test_pruning_beyond_cache_time():
    buffer = TransformBuffer(cache_time_s=2.0)
    for second in range(6):
        buffer.set_transform('odom', 'base', second * S, pose(x=float(second)))
    assert buffer.lookup('odom', 'base', 3 * S).almost_equal(pose(x=3.0))
    with pytest.raises(ExtrapolationError, match=r'samples from 3\.000000000 s to 5\.0'):
        buffer.lookup('odom', 'base', 2 * S)
    with pytest.raises(TransformDataError, match='older than the cache window'):
        buffer.set_transform('odom', 'base', S, pose())
    # out-of-order samples inside the window are inserted in time order
    buffer.set_transform('odom', 'base', 4 * S + S // 2, pose(x=10.0))
    assert buffer.lookup('odom', 'base', 4 * S + S // 4).almost_equal(pose(x=7.0))
    buffer.clear()
    assert buffer.frames() == set()
    buffer.set_transform('odom', 'base', 0, pose())  # time went back: accepted after clear()


def test_clear_keeping_static_transforms_forgets_only_the_time_line():
    """A backwards clock jump: dynamic samples go, latched statics stay (tf2's clear)."""
    buffer = TransformBuffer()
    buffer.set_transform('base', 'camera', 0, pose(x=0.5), static=True)
    buffer.set_transform('odom', 'base', 100 * S, pose(x=1.0))
    buffer.clear(keep_static=True)
    assert buffer.frames() == {'base', 'camera'}
    assert buffer.lookup('base', 'camera', 5 * S).almost_equal(pose(x=0.5))
    buffer.set_transform('odom', 'base', 5 * S, pose(x=2.0))  # the new time line
    assert buffer.lookup('odom', 'camera', 5 * S).almost_equal(pose(x=2.5))


def test_timeout_validation(robot):
    for timeout in (-1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match='timeout'):
            robot.lookup('map', 'base', 0, timeout=timeout)


def test_constructor_validation():
    with pytest.raises(ValueError, match='cache_time_s'):
        TransformBuffer(cache_time_s=0.0)
    with pytest.raises(ValueError, match='extrapolation_tolerance_s'):
        TransformBuffer(extrapolation_tolerance_s=-1.0)


def test_lookup_waits_for_data_until_the_timeout():
    buffer = TransformBuffer()
    buffer.set_transform('odom', 'base', 0, pose())
    arrived = threading.Event()

    def publish_later():
        arrived.wait(timeout=5.0)
        buffer.set_transform('odom', 'base', S, pose(x=1.0))

    publisher = threading.Thread(target=publish_later)
    publisher.start()
    with pytest.raises(ExtrapolationError):
        buffer.lookup('odom', 'base', S // 2, timeout=0.05)  # nothing arrives in 50 ms
    arrived.set()
    started = time.monotonic()
    result = buffer.lookup('odom', 'base', S // 2, timeout=10.0)
    waited = time.monotonic() - started
    publisher.join(timeout=5.0)
    assert result.almost_equal(pose(x=0.5))
    assert waited < 5.0, 'the lookup must wake up when data arrives, not at its deadline'
    assert buffer.can_transform('odom', 'base', S // 2)
    assert not buffer.can_transform('odom', 'base', 2 * S, timeout=0.01)


def test_concurrent_writers_and_readers():
    buffer = TransformBuffer(cache_time_s=1.0)
    buffer.set_transform('map', 'odom', 0, pose(x=1.0), static=True)
    buffer.set_transform('odom', 'base', 0, pose())
    stop = threading.Event()
    failures = []
    samples = 2000

    def writer():
        for index in range(1, samples + 1):
            # x grows 1 m per second of stamp time: every interpolated value is predictable
            buffer.set_transform('odom', 'base', index * S // 100, pose(x=index / 100))
        stop.set()

    def reader():
        while not stop.is_set():
            try:
                latest = buffer.lookup('map', 'base')
                stamp_x = latest.translation[0] - 1.0
                if not (0.0 <= stamp_x <= samples / 100 and latest.translation[1] == 0.0):
                    failures.append(latest)
            except LookupError as error:
                failures.append(error)

    threads = [threading.Thread(target=writer)] + [threading.Thread(target=reader)
                                                   for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30.0)
    assert not any(thread.is_alive() for thread in threads)
    assert failures == []
    assert buffer.lookup('map', 'base').almost_equal(pose(x=1.0 + samples / 100))


# ---------------------------------------------------------------- whole recordings (bag tools)

def test_set_transforms_merges_out_of_order_samples_and_keeps_the_last_repeat():
    buffer = TransformBuffer(cache_time_s=None)
    buffer.set_transform('odom', 'base', 2 * S, pose(x=2.0))
    repeats = buffer.set_transforms('odom', 'base', [3 * S, 0, 2 * S, 0],
                                    [pose(x=3.0), pose(x=-1.0), pose(x=20.0), pose(x=0.0)])
    assert repeats == 2  # 2 s repeats the stored sample, 0 s repeats within the batch
    assert buffer.lookup('odom', 'base', 2 * S).almost_equal(pose(x=20.0))
    assert buffer.lookup('odom', 'base', 0).almost_equal(pose(x=0.0))
    assert buffer.lookup('odom', 'base', S).almost_equal(pose(x=10.0))
    # no cache window: a sample 1000 s older than the newest is still accepted
    buffer.set_transform('odom', 'base', 1000 * S, pose())
    buffer.set_transform('odom', 'base', 1, pose())
    assert buffer.set_transforms('base', 'camera', [5, 7], [pose(y=1.0), pose(y=2.0)],
                                 static=True) == 0
    assert buffer.lookup('base', 'camera', 0).almost_equal(pose(y=2.0))
    assert buffer.set_transforms('base', 'lidar', [], []) == 0


def test_set_transforms_checks_like_set_transform_and_prunes_to_the_window():
    buffer = TransformBuffer(cache_time_s=2.0)
    buffer.set_transform('map', 'odom', 0, pose())
    with pytest.raises(TransformDataError, match="'odom' already has parent 'map'"):
        buffer.set_transforms('world', 'odom', [0], [pose()])
    with pytest.raises(TransformDataError, match='is dynamic; got a static'):
        buffer.set_transforms('map', 'odom', [0], [pose()], static=True)
    with pytest.raises(TransformDataError, match='2 stamps for 1 transforms'):
        buffer.set_transforms('odom', 'base', [0, 1], [pose()])
    with pytest.raises(TransformDataError, match='must be a Transform'):
        buffer.set_transforms('odom', 'base', [0], ['pose'])
    buffer.set_transforms('odom', 'base', [S * k for k in range(6)],
                          [pose(x=float(k)) for k in range(6)])
    with pytest.raises(ExtrapolationError, match=r'samples from 3\.000000000 s'):
        buffer.lookup('odom', 'base', 2 * S)


def test_clean_frame_id_strips_ros1_slashes():
    assert clean_frame_id('/map') == 'map' and clean_frame_id('base_link') == 'base_link'


def test_lookup_many_matches_lookup_at_every_stamp(robot):
    stamps = [0, S // 3, S, 3 * S // 2, 2 * S, 2 * S + 1, 4 * S]
    translations, quats, valid = robot.lookup_many('optical', 'map', stamps)
    # map -> odom ends at 2 s: later stamps have no data on that edge
    assert valid.tolist() == [True] * 5 + [False] * 2
    assert np.isnan(translations[~valid]).all() and np.isnan(quats[~valid]).all()
    for stamp, translation, quat in zip(stamps[:5], translations, quats):
        assert Transform(translation, quat).almost_equal(robot.lookup('optical', 'map', stamp),
                                                         1e-9, 1e-9)
        assert quat[3] >= 0.0
    # between branches, through the common ancestor
    robot.set_transform('map', 'marker', 0, pose(y=4.0), static=True)
    translations, quats, valid = robot.lookup_many('marker', 'camera_link', [S])
    assert valid.all() and Transform(translations[0], quats[0]).almost_equal(
        robot.lookup('marker', 'camera_link', S), 1e-9, 1e-9)
    translations, quats, valid = robot.lookup_many('base', 'base', [1, 2])
    assert valid.all() and np.allclose(quats, [[0, 0, 0, 1.0]] * 2)
    with pytest.raises(FrameNotFound, match="frame 'gps'"):
        robot.lookup_many('map', 'gps', [0])


def test_lookup_many_honours_the_gap_limit_and_the_extrapolation_tolerance():
    buffer = TransformBuffer(extrapolation_tolerance_s=0.5)
    for second in (0, 1, 4):
        buffer.set_transform('odom', 'base', second * S, pose(x=float(second)))
    queries = [-S, -S // 4, S // 2, 2 * S, 4 * S + S // 4, 5 * S]
    translations, _, valid = buffer.lookup_many('odom', 'base', queries, max_gap_ns=2 * S)
    assert valid.tolist() == [False, True, True, False, True, False]
    np.testing.assert_allclose(translations[[1, 2, 4], 0], [0.0, 0.5, 4.0])
    _, _, valid = buffer.lookup_many('odom', 'base', [2 * S])
    assert valid.tolist() == [True]


def test_chain_stamps_is_the_union_of_the_dynamic_edges(robot):
    stamps = robot.chain_stamps('optical', 'map')
    assert stamps.tolist() == [0, S, 2 * S, 3 * S, 4 * S]
    assert robot.chain_stamps('base', 'optical').tolist() == []  # static edges only
    assert robot.chain_stamps('map', 'odom').tolist() == [0, 2 * S]
    robot.set_transform('world', 'satellite', 0, pose(), static=True)
    with pytest.raises(ConnectivityError, match="no TF chain connects 'map' and 'satellite'"):
        robot.chain_stamps('map', 'satellite')
