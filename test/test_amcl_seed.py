"""When the node re-seeds AMCL (mspr_ros.estimation.amcl_seed, ROS-free)."""
import numpy as np
import pytest

from mspr_ros.estimation.amcl_seed import AmclSeedPolicy

SECOND = 1_000_000_000


def _covariance(xy_stddev, yaw_stddev):
    return np.diag([xy_stddev ** 2, xy_stddev ** 2, 0.0, 0.0, 0.0, yaw_stddev ** 2])


def test_seeds_only_when_amcl_is_uncertain_and_not_just_seeded():
    policy = AmclSeedPolicy(position_stddev_m=0.5, yaw_stddev_rad=0.35, min_interval_s=10.0)
    assert policy.reason(_covariance(0.2, 0.1), 100 * SECOND, None) is None
    assert policy.reason(_covariance(0.5, 0.35), 100 * SECOND, None) is None  # at the threshold
    assert 'position stddev 0.80 m' in policy.reason(_covariance(0.8, 0.1), 100 * SECOND, None)
    assert 'yaw stddev 0.50 rad' in policy.reason(_covariance(0.2, 0.5), 100 * SECOND, None)
    # y alone counts too.
    covariance = _covariance(0.1, 0.1)
    covariance[1, 1] = 1.0
    assert policy.reason(covariance, 100 * SECOND, None) is not None
    # Within the interval of the last seed: no; after it: yes.
    assert policy.reason(_covariance(2.0, 0.1), 100 * SECOND, 95 * SECOND) is None
    assert policy.reason(_covariance(2.0, 0.1), 105 * SECOND, 95 * SECOND) is not None


def test_bad_input_is_refused_with_a_message():
    policy = AmclSeedPolicy()
    with pytest.raises(ValueError, match='6x6'):
        policy.reason(np.eye(3), 0, None)
    with pytest.raises(ValueError, match='finite'):
        policy.reason(np.full((6, 6), np.nan), 0, None)
    with pytest.raises(ValueError, match='position_stddev_m'):
        AmclSeedPolicy(position_stddev_m=0.0)
    with pytest.raises(ValueError, match='min_interval_s'):
        AmclSeedPolicy(min_interval_s=-1.0)
