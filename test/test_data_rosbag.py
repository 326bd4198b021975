"""rosbag2 reading (mcap and sqlite3): image decoding, TF chains, interpolation, exclusions."""
import logging

import cv2
import numpy as np
import pytest
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import get_typestore, Stores
from scipy.spatial.transform import Rotation

from mspr_ros.geometry.transforms import Transform
from mspr_training.data import (DatasetError, iter_bag_images, read_bag_trajectory, read_rosbag,
                                read_rosbag_with_stats, Trajectory)
from mspr_training.data.rosbag import read_transforms

TYPES = get_typestore(Stores.ROS2_HUMBLE)
STORAGES = {'mcap': StoragePlugin.MCAP, 'sqlite3': StoragePlugin.SQLITE3}
SECOND = 1_000_000_000
T0 = 1_700_000_000 * SECOND


class BagBuilder:
    """Writes hand-made messages into a bag with plain ``rosbags`` (independent of our writer)."""

    def __init__(self, path, storage='mcap'):
        """Open a new bag."""
        self.writer = Writer(path, version=8, storage_plugin=STORAGES[storage])
        self.writer.open()
        self.connections = {}

    def _connection(self, topic, msgtype):
        if topic not in self.connections:
            self.connections[topic] = self.writer.add_connection(topic, msgtype, typestore=TYPES)
        return self.connections[topic]

    def write(self, topic, stamp, message):
        """Write ``message`` on ``topic`` with log time ``stamp``."""
        connection = self._connection(topic, message.__msgtype__)
        self.writer.write(connection, stamp, TYPES.serialize_cdr(message, message.__msgtype__))

    def write_raw(self, topic, msgtype, stamp, data):
        """Write raw bytes as a message of ``msgtype`` (for corrupt payloads)."""
        self.writer.write(self._connection(topic, msgtype), stamp, data)

    def close(self):
        """Finish the bag."""
        self.writer.close()


def msg(msgtype, **fields):
    """Return a message of ``msgtype``."""
    return TYPES.types[msgtype](**fields)


def header(stamp, frame_id):
    """Return a std_msgs/Header."""
    return msg('std_msgs/msg/Header', frame_id=frame_id,
               stamp=msg('builtin_interfaces/msg/Time', sec=stamp // SECOND,
                         nanosec=stamp % SECOND))


def image_msg(stamp, pixels, encoding, step=None, frame_id='cam'):
    """Return a sensor_msgs/Image with ``pixels`` (H, W, C) and optional row padding."""
    height, width = pixels.shape[:2]
    row = pixels.reshape(height, -1)
    step = step or row.shape[1]
    padded = np.zeros((height, step), np.uint8)
    padded[:, :row.shape[1]] = row
    return msg('sensor_msgs/msg/Image', header=header(stamp, frame_id), height=height,
               width=width, encoding=encoding, is_bigendian=0, step=step, data=padded.ravel())


def compressed_msg(stamp, rgb, extension):
    """Return a sensor_msgs/CompressedImage holding ``rgb`` encoded by OpenCV."""
    ok, data = cv2.imencode(extension, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    return msg('sensor_msgs/msg/CompressedImage', header=header(stamp, 'cam'),
               format=extension[1:], data=data.ravel())


def pose_msg(stamp, position, quat, frame_id='map'):
    """Return a geometry_msgs/PoseStamped."""
    return msg('geometry_msgs/msg/PoseStamped', header=header(stamp, frame_id),
               pose=msg('geometry_msgs/msg/Pose',
                        position=msg('geometry_msgs/msg/Point', x=position[0], y=position[1],
                                     z=position[2]),
                        orientation=msg('geometry_msgs/msg/Quaternion', x=quat[0], y=quat[1],
                                        z=quat[2], w=quat[3])))


def tf_msg(stamp, parent, child, position, quat):
    """Return a tf2_msgs/TFMessage holding one transform T_parent_child."""
    transform = msg('geometry_msgs/msg/Transform',
                    translation=msg('geometry_msgs/msg/Vector3', x=position[0], y=position[1],
                                    z=position[2]),
                    rotation=msg('geometry_msgs/msg/Quaternion', x=quat[0], y=quat[1],
                                 z=quat[2], w=quat[3]))
    return msg('tf2_msgs/msg/TFMessage', transforms=[msg(
        'geometry_msgs/msg/TransformStamped', header=header(stamp, parent),
        child_frame_id=child, transform=transform)])


def random_image(seed=0, shape=(5, 7, 3)):
    """Return a random uint8 image."""
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


# ---------------------------------------------------------------- images


@pytest.mark.parametrize('storage', ['mcap', 'sqlite3'])
def test_iter_bag_images_decodes_every_encoding_and_reports_bad_messages(tmp_path, storage):
    rgb = random_image()
    grey = rgb[:, :, 1]
    bag = BagBuilder(tmp_path / 'bag', storage)
    bag.write('/cam', T0 + 1, image_msg(T0 + 1, rgb, 'rgb8', step=7 * 3 + 5))
    bag.write('/cam', T0 + 2, image_msg(T0 + 2, rgb[:, :, ::-1], 'bgr8'))
    alpha = np.full(rgb.shape[:2] + (1,), 255, np.uint8)
    bag.write('/cam', T0 + 3, image_msg(T0 + 3, np.concatenate([rgb, alpha], 2), 'rgba8'))
    bag.write('/cam', T0 + 4, image_msg(T0 + 4, np.concatenate([rgb[:, :, ::-1], alpha], 2),
                                        'bgra8', step=7 * 4 + 4))
    bag.write('/cam', T0 + 5, image_msg(T0 + 5, grey[:, :, None], 'mono8', step=7 + 3))
    bad_size = image_msg(T0 + 6, rgb, 'rgb8')
    bad_size.data = bad_size.data[:-1]
    bag.write('/cam', T0 + 6, bad_size)
    bag.write('/cam', T0 + 7, image_msg(T0 + 7, rgb, 'yuv422_weird'))
    bag.write_raw('/cam', 'sensor_msgs/msg/Image', T0 + 8, b'\x00\x01\x00\x00garbage')
    bag.write('/cam', T0 + 9, image_msg(0, rgb, 'rgb8'))
    bag.write('/other', T0 + 1, msg('std_msgs/msg/String', data='ignored'))
    bag.close()

    images = list(iter_bag_images(tmp_path / 'bag', '/cam'))
    assert [i.stamp_ns for i in images[:7]] == [T0 + k for k in range(1, 8)]
    for image in images[:4]:
        assert image.error is None and image.frame_id == 'cam'
        np.testing.assert_array_equal(image.rgb, rgb)
    np.testing.assert_array_equal(images[4].rgb, np.repeat(grey[:, :, None], 3, axis=2))
    assert images[5].rgb is None and 'bytes' in images[5].error
    assert images[6].rgb is None and 'yuv422_weird' in images[6].error
    assert images[7].rgb is None and images[7].error.startswith('cannot deserialise')
    # An unset (zero) header stamp falls back to the bag's log time.
    assert images[8].stamp_ns == T0 + 9 and images[8].rgb is not None
    assert images[0].rgb.flags.writeable


def test_iter_bag_images_compressed_png_is_exact_and_corrupt_jpeg_is_reported(tmp_path):
    ramp = np.linspace(0, 255, 32).astype(np.uint8)
    rgb = np.stack([np.tile(ramp, (24, 1)), np.tile(ramp[:24, None], (1, 32)),
                    np.full((24, 32), 90, np.uint8)], axis=2)  # smooth: JPEG keeps it close
    bag = BagBuilder(tmp_path / 'bag')
    bag.write('/cam/compressed', T0 + 1, compressed_msg(T0 + 1, rgb, '.png'))
    bag.write('/cam/compressed', T0 + 2, compressed_msg(T0 + 2, rgb, '.jpg'))
    truncated = compressed_msg(T0 + 3, rgb, '.jpg')
    truncated.data = truncated.data[:len(truncated.data) // 2]
    bag.write('/cam/compressed', T0 + 3, truncated)
    bag.close()
    png, jpeg, broken = iter_bag_images(tmp_path / 'bag', '/cam/compressed')
    np.testing.assert_array_equal(png.rgb, rgb)
    assert jpeg.rgb.shape == rgb.shape and np.abs(jpeg.rgb.astype(int) - rgb).mean() < 4
    assert broken.rgb is None and 'truncated' in broken.error


def test_missing_or_wrong_topics_and_unreadable_bags_raise_naming_the_bag(tmp_path):
    bag = BagBuilder(tmp_path / 'bag')
    bag.write('/names', T0, msg('std_msgs/msg/String', data='x'))
    bag.close()
    with pytest.raises(DatasetError, match=r"bag: no topic '/cam' \(topics: /names\)"):
        list(iter_bag_images(tmp_path / 'bag', '/cam'))
    with pytest.raises(DatasetError, match=r"topic '/names' has type std_msgs/msg/String"):
        list(iter_bag_images(tmp_path / 'bag', '/names'))
    with pytest.raises(DatasetError, match='nothere: bag does not exist'):
        list(iter_bag_images(tmp_path / 'nothere', '/cam'))
    (tmp_path / 'junk').mkdir()
    (tmp_path / 'junk' / 'metadata.yaml').write_text('not: a bag\n')
    with pytest.raises(DatasetError, match='junk: cannot open as a rosbag2'):
        list(iter_bag_images(tmp_path / 'junk', '/cam'))


# ---------------------------------------------------------------- trajectories


def yaw_quat(angle):
    """Return the xyzw quaternion of a rotation by ``angle`` about z."""
    return Rotation.from_euler('z', angle).as_quat()


def test_trajectory_interpolates_linearly_and_slerps_within_gaps():
    trajectory = Trajectory(
        np.array([0, 100, 200, 1000]), np.array([[0, 0, 0], [1, 2, 0], [2, 2, 0], [3, 3, 3.0]]),
        np.array([yaw_quat(0), yaw_quat(0.4), yaw_quat(0.8), yaw_quat(1.0)]), 'map')
    positions, orientations, valid = trajectory.interpolate([-1, 0, 25, 150, 200, 500, 1000,
                                                             1001], max_gap_ns=150)
    assert valid.tolist() == [False, True, True, True, True, False, True, False]
    np.testing.assert_allclose(positions[2], [0.25, 0.5, 0])
    np.testing.assert_allclose(positions[3], [1.5, 2, 0])
    np.testing.assert_allclose(Rotation.from_quat(orientations[2]).as_euler('xyz')[2], 0.1)
    np.testing.assert_allclose(orientations[6], yaw_quat(1.0))
    assert np.isnan(positions[0]).all() and np.isnan(orientations[5]).all()
    # Without a gap limit the middle of the long gap is interpolated too.
    _, _, valid = trajectory.interpolate([500], max_gap_ns=None)
    assert valid.tolist() == [True]


def test_trajectory_validates_its_arrays():
    with pytest.raises(ValueError, match='strictly increasing'):
        Trajectory([0, 0], np.zeros((2, 3)), np.tile([0, 0, 0, 1.0], (2, 1)), 'map')
    with pytest.raises(ValueError, match='disagree'):
        Trajectory([0, 1], np.zeros((3, 3)), np.tile([0, 0, 0, 1.0], (2, 1)), 'map')
    single = Trajectory([5], [[1, 2, 3]], [[0, 0, 0, -2.0]], 'map')
    np.testing.assert_allclose(single.orientations[0], [0, 0, 0, 1])
    _, _, valid = single.interpolate([4, 5, 6], max_gap_ns=10)
    assert valid.tolist() == [False, True, False]


def map_odom(t):
    """Ground-truth T_map_odom at time t (s): drifting and turning, linear in t."""
    return np.array([1.0 + 0.5 * t, -2.0, 0.0]), yaw_quat(0.3 + 0.1 * t)


def odom_base(t):
    """Odometry T_odom_base at time t (s), linear in t."""
    return np.array([0.2 * t, 2.0 * t, 0.0]), yaw_quat(-0.2 * t)


BASE_CAMERA = (np.array([0.2, 0.0, 1.2]),
               Rotation.from_matrix([[0, 0, 1], [-1, 0, 0], [0, -1, 0.0]]).as_quat())


def compose(a, b):
    """Return a * b of (position, xyzw) poses."""
    rotation = Rotation.from_quat(a[1])
    return a[0] + rotation.apply(b[0]), (rotation * Rotation.from_quat(b[1])).as_quat()


def expected_map_camera(t):
    """Return T_map_camera at time t by composing the three analytic transforms."""
    return compose(compose(map_odom(t), odom_base(t)), BASE_CAMERA)


@pytest.mark.parametrize('storage', ['mcap', 'sqlite3'])
def test_tf_chain_composes_three_hops_with_interpolation(tmp_path, storage):
    bag = BagBuilder(tmp_path / 'bag', storage)
    bag.write('/tf_static', T0, tf_msg(T0, 'base_link', 'camera_optical', *BASE_CAMERA))
    for k in range(11):  # map -> odom at 10 Hz over 1 s, with a ROS 1 style leading slash
        stamp = T0 + k * SECOND // 10
        bag.write('/tf', stamp, tf_msg(stamp, '/map', 'odom', *map_odom(k / 10)))
    for k in range(1, 19):  # odom -> base_link at 20 Hz from 0.05 s to 0.9 s (other stamps)
        stamp = T0 + k * SECOND // 20 + 7
        bag.write('/tf', stamp, tf_msg(stamp, 'odom', 'base_link', *odom_base(k / 20 + 7e-9)))
    bag.write('/unrelated', T0, msg('std_msgs/msg/String', data='ignored'))
    bag.close()

    trajectory = read_bag_trajectory(tmp_path / 'bag', frames=('map', 'camera_optical'))
    assert trajectory.frame_id == 'map'
    seconds = (trajectory.stamps_ns - T0) / SECOND
    # Union of both dynamic edges' stamps, kept where both are inside their ranges.
    assert seconds.min() >= 0.05 and seconds.max() <= 0.9 + 1e-8 and len(trajectory) == 27
    for t, position, quat in zip(seconds, trajectory.positions, trajectory.orientations):
        want_position, want_quat = expected_map_camera(t)
        np.testing.assert_allclose(position, want_position, atol=1e-9)
        assert abs(abs(np.dot(quat, want_quat)) - 1) < 1e-12
    inverse = read_bag_trajectory(tmp_path / 'bag', frames=('camera_optical', 'map'))
    np.testing.assert_allclose(inverse.positions[3], Rotation.from_quat(
        trajectory.orientations[3]).inv().apply(-trajectory.positions[3]), atol=1e-9)


def test_tf_chain_errors_name_the_bag_and_the_frames(tmp_path):
    bag = BagBuilder(tmp_path / 'bag')
    bag.write('/tf_static', T0, tf_msg(T0, 'base_link', 'camera', *BASE_CAMERA))
    bag.write('/tf', T0, tf_msg(T0, 'map', 'odom', *map_odom(0)))
    bag.write('/tf', T0 + 1, tf_msg(T0 + 1, 'map', 'odom', *map_odom(1)))
    bag.close()
    with pytest.raises(DatasetError, match=r"bag: frame 'robot' is not in the TF tree"):
        read_bag_trajectory(tmp_path / 'bag', frames=('map', 'robot'))
    with pytest.raises(DatasetError, match=r"bag: no TF chain connects 'map' and 'camera'"):
        read_bag_trajectory(tmp_path / 'bag', frames=('map', 'camera'))
    with pytest.raises(DatasetError, match='static transforms only'):
        read_bag_trajectory(tmp_path / 'bag', frames=('base_link', 'camera'))
    with pytest.raises(ValueError, match='exactly one'):
        read_bag_trajectory(tmp_path / 'bag')


@pytest.mark.parametrize('second_message, words', [
    (('/tf', 'world', 'odom', 1.0), "invalid TF tree: frame 'odom' already has parent 'map'"),
    (('/tf_static', 'map', 'odom', 1.0), "invalid TF tree: edge 'map' -> 'odom' is dynamic"),
    (('/tf', 'odom', 'base_link', 0.0), 'invalid transform on .*non-zero quaternion'),
])
def test_tf_reader_refuses_an_invalid_tree_naming_the_bag(tmp_path, second_message, words):
    topic, parent, child, w = second_message
    bag = BagBuilder(tmp_path / 'bag')
    bag.write('/tf', T0, tf_msg(T0, 'map', 'odom', *map_odom(0)))
    bag.write(topic, T0 + 1, tf_msg(T0 + 1, parent, child, (0, 0, 0), (0, 0, 0, w)))
    bag.close()
    with pytest.raises(DatasetError, match=f'bag: {words}'):
        read_bag_trajectory(tmp_path / 'bag', frames=('map', 'odom'))


@pytest.mark.parametrize('topic, msgtype, read', [
    ('/tf', 'tf2_msgs/msg/TFMessage', {'frames': ('map', 'odom')}),
    ('/gt', 'geometry_msgs/msg/PoseStamped', {'pose_topic': '/gt'}),
])
def test_corrupt_ground_truth_messages_raise_naming_bag_topic_and_time(tmp_path, topic, msgtype,
                                                                       read):
    bag = BagBuilder(tmp_path / 'bag')
    bag.write_raw(topic, msgtype, T0 + 5, b'\x00\x01 not cdr')
    bag.close()
    with pytest.raises(DatasetError, match=f"bag: corrupt message on '{topic}' at {T0 + 5} ns"):
        read_bag_trajectory(tmp_path / 'bag', **read)


def test_read_transforms_fills_one_transform_buffer_or_says_there_is_no_tf(tmp_path):
    bag = BagBuilder(tmp_path / 'bag')
    bag.write('/tf_static', T0, tf_msg(T0, '/base_link', 'camera', *BASE_CAMERA))
    bag.write('/gt', T0, pose_msg(T0, (0, 0, 0), yaw_quat(0)))
    bag.close()
    buffer, repeats = read_transforms(tmp_path / 'bag')
    assert buffer.frames() == {'base_link', 'camera'} and repeats == 0
    assert buffer.lookup('base_link', 'camera', T0 + 10**12).almost_equal(Transform(*BASE_CAMERA))
    with pytest.raises(DatasetError, match="bag: no TF topic among /odom_tf"):
        read_transforms(tmp_path / 'bag', tf_topics=('/odom_tf',), static_tf_topics=())
    assert read_transforms(tmp_path / 'bag', ('/odom_tf',), (), False)[0].frames() == set()
    with pytest.raises(DatasetError, match="topic '/gt' has type geometry_msgs/msg/PoseStamped"):
        read_transforms(tmp_path / 'bag', tf_topics=('/gt',))


def test_tf_reader_keeps_the_last_of_repeated_stamps_and_says_so(tmp_path, caplog):
    bag = BagBuilder(tmp_path / 'bag')
    for k, x in enumerate((0.0, 5.0, 1.0)):  # the second 0 s sample replaces the first
        stamp = T0 + (k // 2) * SECOND
        bag.write('/tf', stamp, tf_msg(stamp, 'map', 'odom', (x, 0, 0), yaw_quat(0)))
    bag.close()
    with caplog.at_level(logging.WARNING):
        trajectory = read_bag_trajectory(tmp_path / 'bag', frames=('map', 'odom'))
    np.testing.assert_allclose(trajectory.positions[:, 0], [5.0, 1.0])
    assert '1 TF messages repeat a stamp; kept the last of each' in caplog.text


def test_pose_topic_trajectory_and_its_errors(tmp_path):
    bag = BagBuilder(tmp_path / 'bag')
    for k in range(3):
        bag.write('/gt', T0 + k, pose_msg(T0 + k, (k, 0, 0), yaw_quat(0.1 * k)))
    bag.write('/mixed', T0, pose_msg(T0, (0, 0, 0), yaw_quat(0), 'map'))
    bag.write('/mixed', T0 + 1, pose_msg(T0 + 1, (0, 0, 0), yaw_quat(0), 'odom'))
    bag.close()
    trajectory = read_bag_trajectory(tmp_path / 'bag', pose_topic='/gt')
    assert trajectory.frame_id == 'map' and len(trajectory) == 3
    np.testing.assert_allclose(trajectory.positions[:, 0], [0, 1, 2])
    with pytest.raises(DatasetError, match=r"topic '/mixed' mixes frames \['map', 'odom'\]"):
        read_bag_trajectory(tmp_path / 'bag', pose_topic='/mixed')


# ---------------------------------------------------------------- posed samples


def test_read_rosbag_interpolates_ground_truth_and_counts_every_exclusion(tmp_path, caplog):
    rgb = random_image(2)
    bag = BagBuilder(tmp_path / 'walk')
    bag.write('/scene', T0 + 50, msg('std_msgs/msg/String', data='lab'))
    bag.write('/scene', T0 + 450, msg('std_msgs/msg/String', data='hall'))
    for stamp in (100, 200, 300, 700, 800):  # a 400 ns hole between 300 and 700
        bag.write('/gt', T0 + stamp, pose_msg(T0 + stamp, (stamp / 100, 0, 0), yaw_quat(0)))
    for stamp in (10, 40, 150, 250, 500, 750, 900):
        bag.write('/cam', T0 + stamp, image_msg(T0 + stamp, rgb, 'rgb8', frame_id='camera_x'))
    bag.write('/cam', T0 + 260, image_msg(T0 + 260, rgb, 'no_such_encoding'))
    bag.close()

    result = read_rosbag_with_stats(tmp_path / 'walk', '/cam', pose_topic='/gt',
                                    scene_topic='/scene', max_gap_ns=150)
    stats = result.stats
    assert (stats.images, stats.kept, stats.undecodable, stats.without_ground_truth,
            stats.without_scene) == (8, 3, 1, 4, 0)
    assert [s.stamp_ns - T0 for s in result.samples] == [150, 250, 750]
    assert [s.scene for s in result.samples] == ['lab', 'lab', 'hall']
    np.testing.assert_allclose([s.position[0] for s in result.samples], [1.5, 2.5, 7.5])
    sample = result.samples[0]
    assert sample.sequence == 'walk' and sample.frame == 'camera_x'
    np.testing.assert_array_equal(sample.image, rgb)
    assert 'no_such_encoding' in ' '.join(stats.errors)

    with caplog.at_level(logging.WARNING):
        samples = read_rosbag(tmp_path / 'walk', '/cam', pose_topic='/gt', scene='fixed',
                              max_gap_ns=500)
    assert [s.stamp_ns - T0 for s in samples] == [150, 250, 500, 750]
    assert {s.scene for s in samples} == {'fixed'}
    assert '4/8 images kept; 1 undecodable, 3 without ground truth' in caplog.text


def test_read_rosbag_counts_images_before_the_first_scene_message(tmp_path):
    bag = BagBuilder(tmp_path / 'bag')
    bag.write('/gt', T0, pose_msg(T0, (0, 0, 0), yaw_quat(0)))
    bag.write('/gt', T0 + 100, pose_msg(T0 + 100, (1, 0, 0), yaw_quat(0)))
    bag.write('/scene', T0 + 60, msg('std_msgs/msg/String', data='lab'))
    for stamp in (20, 80):
        bag.write('/cam', T0 + stamp, image_msg(T0 + stamp, random_image(), 'rgb8'))
    bag.close()
    result = read_rosbag_with_stats(tmp_path / 'bag', '/cam', pose_topic='/gt',
                                    scene_topic='/scene')
    assert (result.stats.kept, result.stats.without_scene) == (1, 1)
    assert result.samples[0].scene == 'lab'
