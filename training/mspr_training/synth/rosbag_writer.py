"""Writer of rendered sequences as a rosbag2 recording (mcap or sqlite3), with drifting odometry.

Topics (stamps: ``rate_hz`` from a fixed start time, a 1 s gap between sequences so that ground
truth is never interpolated across the jump from one scene to the next):

- ``/camera/image_raw`` sensor_msgs/Image rgb8, ``header.frame_id = camera_optical``;
- ``/camera/image_raw/compressed`` sensor_msgs/CompressedImage (jpeg or png), when asked;
- ``/camera/camera_info`` sensor_msgs/CameraInfo: the camera the frames were rendered through
  (size, distortion model and coefficients; a pinhole as ``plumb_bob`` with zeros);
- ``/tf`` odom -> base_link: the robot's wheel odometry, drifting as ``odometry_drift`` says
  (``mspr_training.synth.odometry_drift``: scale error, heading drift, noise; seeded);
- ``/odom`` nav_msgs/Odometry: the same odometry with its twist and the covariance its noise
  model implies (for ``use_odom_topic``, robot_localization);
- ``/tf_static`` base_link -> camera_optical (the fixed camera extrinsic, transient local);
- ``/ground_truth/camera_pose`` geometry_msgs/PoseStamped of the camera optical frame in ``map``;
- ``/ground_truth/base_pose`` geometry_msgs/PoseStamped of ``base_link`` in ``map``;
- ``/ground_truth/scene`` std_msgs/String, the scene of the following frames;
- ``/ground_truth/tf`` the true map -> odom at each frame,
  ``T_map_odom(t) = T_map_base(t) inv(T_odom_base(t))``: what a perfect localizer publishes.
  It changes over time as the odometry drifts (constant with ``OdometryDrift.none()``), and it
  is kept off ``/tf`` so that replaying the bag to a localizer, which publishes map -> odom
  itself, creates no second source of that transform. Read ``/tf`` and ``/ground_truth/tf``
  together for the true chain map -> odom -> base_link -> camera_optical.

(Recordings of version 1 kept a constant map -> odom on ``/ground_truth/tf_static``; their
odometry was exact.) Every scene frame coincides with ``map`` (identity alignment).
``<bag>.json`` beside the bag folder (and the bag's ``custom_data`` key ``mspr_synth``) records
scenes, stamps, the camera (``camera``: ``CameraModel.to_dict()``; ``intrinsics`` holds the same,
the key recordings before version 3 used), ``T_map_odom`` at the first frame, the drift
parameters and the extrinsic.
"""
import json
from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation

from mspr_ros.geometry.transforms import canonical_quaternion, Transform
from mspr_ros.geometry.transforms import R_BODY_OPTICAL
from mspr_ros.image_conversion import encode_compressed
from mspr_training.bags.writer import BagWriter, STORAGES
from mspr_training.synth.odometry_drift import DriftingOdometry, OdometryDrift

COMPRESSED_FORMATS = ('jpeg', 'png')
TOPICS = {
    'image': '/camera/image_raw',
    'compressed': '/camera/image_raw/compressed',
    'camera_info': '/camera/camera_info',
    'pose': '/ground_truth/camera_pose',
    'base_pose': '/ground_truth/base_pose',
    'scene': '/ground_truth/scene',
    'tf': '/tf',
    'odom': '/odom',
    'tf_static': '/tf_static',
    'ground_truth_tf': '/ground_truth/tf',
}
_TYPES = {
    'image': 'sensor_msgs/msg/Image', 'camera_info': 'sensor_msgs/msg/CameraInfo',
    'pose': 'geometry_msgs/msg/PoseStamped', 'base_pose': 'geometry_msgs/msg/PoseStamped',
    'scene': 'std_msgs/msg/String', 'tf': 'tf2_msgs/msg/TFMessage',
    'odom': 'nav_msgs/msg/Odometry', 'tf_static': 'tf2_msgs/msg/TFMessage',
    'ground_truth_tf': 'tf2_msgs/msg/TFMessage',
}
FRAMES = {'map': 'map', 'odom': 'odom', 'base': 'base_link', 'camera': 'camera_optical'}
#: Default start of the recording: 2024-01-01T00:00:00Z.
START_NS = 1_704_067_200_000_000_000
SEQUENCE_GAP_NS = 1_000_000_000
#: Camera extrinsic ``T_base_camera``: 0.2 m forward and 1.2 m up on a REP-103 base, optical axes.
EXTRINSIC = np.eye(4)
EXTRINSIC[:3, :3] = R_BODY_OPTICAL
EXTRINSIC[:3, 3] = (0.2, 0.0, 1.2)
FORMAT_VERSION = 3


def map_from_odom(seed) -> np.ndarray:
    """Return a non-identity 4 x 4 ``T_map_odom`` (at the first frame) drawn from ``seed``."""
    rng = np.random.default_rng([seed, 7])
    matrix = np.eye(4)
    matrix[:3, :3] = Rotation.from_euler('z', rng.uniform(0.3, 2.8)).as_matrix()
    matrix[:3, 3] = (*rng.uniform(-4.0, 4.0, 2), 0.0)
    return matrix


def pose_dict(pose):
    """Return {'position': [3], 'orientation_xyzw': [4]} of a 4 x 4 pose or a ``Transform``."""
    transform = pose if isinstance(pose, Transform) else Transform.from_matrix(pose)
    return {'position': transform.translation.tolist(),
            'orientation_xyzw': canonical_quaternion(transform.rotation).tolist()}


class RosbagWriter:
    """Writes rendered frames into one rosbag2 recording (see the module docstring)."""

    def __init__(self, bag_path, camera, storage='mcap', rate_hz=30.0, compressed=None,
                 seed=0, start_ns=START_NS, odometry_drift=OdometryDrift()):
        """Open a new bag folder ``bag_path`` (it must not exist).

        Args:
            bag_path: the rosbag2 folder to create.
            camera: the ``CameraModel`` the frames are rendered through (for camera_info and
                the sidecar); a frame of another camera or size is refused.
            storage: 'mcap' or 'sqlite3'.
            rate_hz: frame rate of the stamps.
            compressed: None, 'jpeg' or 'png': also write the compressed image topic.
            seed: draws ``T_map_odom`` at the first frame, and the odometry noise unless
                ``odometry_drift`` has its own seed.
            start_ns: stamp of the first frame.
            odometry_drift: the odometry error model; ``OdometryDrift.none()`` for exact
                odometry.
        """
        if storage not in STORAGES:
            raise ValueError(f'storage must be one of {tuple(STORAGES)}, got {storage!r}')
        if compressed not in (None, *COMPRESSED_FORMATS):
            raise ValueError(f'compressed must be None or one of {COMPRESSED_FORMATS}')
        self.bag_path = Path(bag_path)
        self.camera = camera
        self.storage = storage
        self.compressed = compressed
        self.period_ns = int(round(1e9 / rate_hz))
        self.rate_hz = rate_hz
        self.map_odom = map_from_odom(seed)
        self.drift = odometry_drift.with_seed(seed)
        self.odometry = DriftingOdometry(self.drift, Transform.from_matrix(self.map_odom))
        self.base_camera = Transform.from_matrix(EXTRINSIC)
        self.next_stamp = start_ns
        self.current = None
        self.sequences = []
        self.bag = BagWriter(self.bag_path, storage)
        for key, msgtype in _TYPES.items():
            self.bag.add_topic(TOPICS[key], msgtype, latched=key == 'tf_static')
        if compressed:
            self.bag.add_topic(TOPICS['compressed'], 'sensor_msgs/msg/CompressedImage')
        self.bag.write_transform(TOPICS['tf_static'], start_ns, FRAMES['base'],
                                 FRAMES['camera'], self.base_camera)

    def add(self, frame):
        """Write every topic of one frame at the next stamp."""
        plan = frame.plan
        if frame.camera not in (None, self.camera) or \
                frame.rgb.shape[:2] != (self.camera.height, self.camera.width):
            raise ValueError(f'a frame rendered through {_described(frame)}, but the bag '
                             f'records {self.camera.to_dict()}')
        new_sequence = self.current is not plan
        if new_sequence:
            if self.current is not None:
                self.next_stamp += SEQUENCE_GAP_NS
            self.current = plan
            self.sequences.append({'scene': plan.scene, 'split': plan.split,
                                   'sequence': plan.number, 'first_stamp_ns': self.next_stamp,
                                   'frames': 0})
        stamp = self.next_stamp
        self.next_stamp += self.period_ns
        self.sequences[-1]['frames'] += 1
        self.sequences[-1]['last_stamp_ns'] = stamp
        T_map_cam = Transform.from_matrix(frame.pose)
        T_map_base = T_map_cam @ self.base_camera.inverse()
        T_odom_base = self.odometry.step(T_map_base, self.period_ns / 1e9,
                                         measured=not new_sequence)
        bag, frames = self.bag, FRAMES
        bag.write_string(TOPICS['scene'], stamp, plan.scene)
        bag.write_transform(TOPICS['tf'], stamp, frames['odom'], frames['base'], T_odom_base)
        bag.write_odometry(TOPICS['odom'], stamp, frames['odom'], frames['base'], T_odom_base,
                           self.odometry.covariance())
        bag.write_transform(TOPICS['ground_truth_tf'], stamp, frames['map'], frames['odom'],
                            T_map_base @ T_odom_base.inverse())
        bag.write_pose(TOPICS['pose'], stamp, frames['map'], T_map_cam)
        bag.write_pose(TOPICS['base_pose'], stamp, frames['map'], T_map_base)
        bag.write_camera_info(TOPICS['camera_info'], stamp, frames['camera'], self.camera)
        bag.write_image(TOPICS['image'], stamp, frames['camera'], frame.rgb)
        if self.compressed:
            bag.write_compressed(TOPICS['compressed'], stamp, frames['camera'],
                                 encode_compressed(frame.rgb, self.compressed), self.compressed)

    def metadata(self):
        """Return the JSON-ready description of the recording."""
        return {
            'format': 'mspr_synth_bag', 'version': FORMAT_VERSION, 'storage': self.storage,
            'rate_hz': self.rate_hz, 'topics': TOPICS, 'frames': FRAMES,
            'compressed': self.compressed, 'sequences': self.sequences,
            'scenes': sorted({s['scene'] for s in self.sequences}),
            'map_from_scene': 'identity: every scene frame is the map frame',
            'camera': self.camera.to_dict(), 'intrinsics': self.camera.to_dict(),
            'T_map_odom': pose_dict(self.map_odom), 'T_map_odom_changes': not self.drift.is_zero,
            'odometry_drift': self.drift.to_dict(), 'T_base_camera': pose_dict(EXTRINSIC),
        }

    def close(self):
        """Finish the bag, write ``<bag>.json`` and return the metadata dict."""
        metadata = self.metadata()
        self.bag.set_custom_data('mspr_synth', json.dumps(metadata))
        self.bag.close()
        sidecar_path(self.bag_path).write_text(json.dumps(metadata, indent=2) + '\n')
        return metadata


def _described(frame):
    """Return the camera of a frame, or its size when it does not record one."""
    if frame.camera is not None:
        return str(frame.camera.to_dict())
    return f'a camera of {frame.rgb.shape[1]} x {frame.rgb.shape[0]} pixels'


def sidecar_path(bag_path) -> Path:
    """Return ``<bag>.json`` beside a bag folder."""
    bag_path = Path(bag_path)
    return bag_path.with_name(bag_path.name + '.json')
