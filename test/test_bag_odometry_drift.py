"""The rendered recordings' wheel odometry drifts as documented: scale, heading, noise, seeded."""
import math

import numpy as np
import pytest

from mspr_ros.geometry.transforms import Transform
from mspr_training.synth.odometry_drift import DriftingOdometry, OdometryDrift

START = Transform.from_xyz_rpy([3.0, -1.0, 0.0], [0.0, 0.0, 0.7])
RATE_HZ = 10.0


def straight_line(length_m, steps, heading=0.0):
    """Return true map <- base poses driving ``length_m`` along a heading in ``steps`` frames."""
    direction = np.array([math.cos(heading), math.sin(heading), 0.0])
    return [Transform.from_xyz_rpy(direction * length_m * k / steps, [0.0, 0.0, heading])
            for k in range(steps + 1)]


def drive(drift, poses, start=START):
    """Return ``(T_odom_base list, true T_map_odom list)`` after driving ``poses``."""
    odometry = DriftingOdometry(drift, start)
    odom, map_odom = [], []
    for pose in poses:
        odom.append(odometry.step(pose, 1.0 / RATE_HZ))
        map_odom.append(pose @ odom[-1].inverse())
    return odom, map_odom


def test_scale_error_lengthens_the_distance_by_its_fraction():
    drift = OdometryDrift(scale_error=0.015, heading_drift_deg_per_min=0.0,
                          translation_noise_m=0.0, heading_noise_deg=0.0)
    odom, _ = drive(drift, straight_line(100.0, 200))
    travelled = np.linalg.norm(odom[-1].translation - odom[0].translation)
    assert travelled == pytest.approx(101.5, abs=1e-6)
    # Exact at the start: odometry begins where the true map -> odom puts it.
    assert (START @ odom[0]).almost_equal(straight_line(100.0, 200)[0], 1e-12, 1e-12)


def test_heading_drift_accumulates_with_time_even_standing_still():
    drift = OdometryDrift(scale_error=0.0, heading_drift_deg_per_min=1.0,
                          translation_noise_m=0.0, heading_noise_deg=0.0)
    # Two minutes parked: the gyro bias turns the odometry by two degrees, and the error grows
    # linearly (after one minute: one degree).
    parked = [Transform.identity()] * int(120 * RATE_HZ + 1)
    odom, _ = drive(drift, parked)
    yaw_deg = [math.degrees(o.yaw() - odom[0].yaw()) for o in odom]
    assert yaw_deg[int(60 * RATE_HZ)] == pytest.approx(1.0, abs=1e-9)
    assert yaw_deg[-1] == pytest.approx(2.0, abs=1e-9)


def test_noise_is_seeded_and_grows_with_the_square_root_of_distance():
    drift = OdometryDrift(scale_error=0.0, heading_drift_deg_per_min=0.0,
                          translation_noise_m=0.005, heading_noise_deg=0.0, seed=4)
    path = straight_line(100.0, 10)  # the variance depends on the distance, not the steps
    first, _ = drive(drift, path)
    again, _ = drive(drift, path)
    other, _ = drive(OdometryDrift(0.0, 0.0, 0.005, 0.0, seed=5), path)
    assert first[-1].almost_equal(again[-1], 0.0, 0.0)
    assert not first[-1].almost_equal(other[-1], 1e-6, 1)
    # Many seeds: the final position error per axis has standard deviation 0.005 * sqrt(100 m).
    errors = []
    for seed in range(200):
        odom, _ = drive(OdometryDrift(0.0, 0.0, 0.005, 0.0, seed=seed), path)
        errors.append((START @ odom[-1]).translation - path[-1].translation)
    assert np.std(errors, axis=0) == pytest.approx([0.05] * 3, rel=0.2)


def test_default_drift_moves_the_true_map_odom_and_none_keeps_it():
    loop = [Transform.from_xyz_rpy([5 * math.cos(a), 5 * math.sin(a), 0.0],
                                   [0.0, 0.0, a + math.pi / 2])
            for a in np.linspace(0.0, 2 * math.pi, 300)]
    _, exact = drive(OdometryDrift.none(), loop)
    assert all(m.almost_equal(START, 1e-9, 1e-9) for m in exact)
    _, drifting = drive(OdometryDrift(seed=1), loop)
    moved = [np.linalg.norm(m.translation - START.translation) for m in drifting]
    # Around a 31 m loop of 10 m diameter, 1.5 % of scale error alone puts the far side of the
    # loop 15 cm off; noise and heading drift add less than that.
    assert moved[0] < 1e-12 and 0.1 < max(moved) < 0.5


def test_a_jump_between_sequences_keeps_the_accumulated_drift():
    odometry = DriftingOdometry(OdometryDrift(seed=2), START)
    for pose in straight_line(20.0, 40):
        odom = odometry.step(pose, 1.0 / RATE_HZ)
    before = pose @ odom.inverse()
    elsewhere = Transform.from_xyz_rpy([50.0, 40.0, 0.0], [0.0, 0.0, -2.0])
    after = elsewhere @ odometry.step(elsewhere, 1.0, measured=False).inverse()
    assert after.almost_equal(before, 1e-9, 1e-9)
    assert not before.almost_equal(START, 1e-3, 1e-3)


def test_bad_parameters_are_rejected():
    with pytest.raises(ValueError, match='finite'):
        OdometryDrift(scale_error=math.nan)
    with pytest.raises(ValueError, match='>= 0'):
        OdometryDrift(translation_noise_m=-0.1)
    with pytest.raises(ValueError, match='> -1'):
        OdometryDrift(scale_error=-1.0)
