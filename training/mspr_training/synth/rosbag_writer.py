"""Writer of rendered sequences as a rosbag2 recording (mcap or sqlite3) through ``rosbags``.

Topics (stamps: ``rate_hz`` from a fixed start time, a 1 s gap between sequences so that ground
truth is never interpolated across the jump from one scene to the next):

- ``/camera/image_raw`` sensor_msgs/Image rgb8, ``header.frame_id = camera_optical``;
- ``/camera/image_raw/compressed`` sensor_msgs/CompressedImage (jpeg or png), when asked;
- ``/camera/camera_info`` sensor_msgs/CameraInfo (pinhole, no distortion);
- ``/ground_truth/camera_pose`` geometry_msgs/PoseStamped of the camera optical frame in ``map``;
- ``/ground_truth/scene`` std_msgs/String, the scene of the following frames;
- ``/tf`` odom -> base_link (odometry: ``T_odom_base = inv(T_map_odom) * T_map_base``);
- ``/tf_static`` base_link -> camera_optical (the fixed camera extrinsic, transient local);
- ``/ground_truth/tf_static`` map -> odom (the fixed ``T_map_odom``). It is kept off ``/tf`` so
  that replaying the bag to a localizer, which publishes map -> odom itself, creates no second
  source of that transform; pass this topic in ``static_tf_topics`` to read the full chain.

Every scene frame coincides with ``map`` (identity alignment). ``<bag>.json`` beside the bag
folder (and the bag's ``custom_data`` key ``mspr_synth``) records scenes, stamps, intrinsics,
``T_map_odom`` and the extrinsic.
"""
import json
from pathlib import Path

import numpy as np
from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability
from rosbags.interfaces import QosTime
from rosbags.rosbag2 import StoragePlugin, Writer
from scipy.spatial.transform import Rotation

from mspr_ros.image_conversion import encode_compressed, rgb_to_image_fields
from mspr_training.data.rosbag import typestore
from mspr_training.synth.camera import R_BODY_OPTICAL

STORAGES = {'mcap': StoragePlugin.MCAP, 'sqlite3': StoragePlugin.SQLITE3}
COMPRESSED_FORMATS = ('jpeg', 'png')
TOPICS = {
    'image': '/camera/image_raw',
    'compressed': '/camera/image_raw/compressed',
    'camera_info': '/camera/camera_info',
    'pose': '/ground_truth/camera_pose',
    'scene': '/ground_truth/scene',
    'tf': '/tf',
    'tf_static': '/tf_static',
    'ground_truth_tf_static': '/ground_truth/tf_static',
}
FRAMES = {'map': 'map', 'odom': 'odom', 'base': 'base_link', 'camera': 'camera_optical'}
#: Default start of the recording: 2024-01-01T00:00:00Z.
START_NS = 1_704_067_200_000_000_000
SEQUENCE_GAP_NS = 1_000_000_000
#: Camera extrinsic ``T_base_camera``: 0.2 m forward and 1.2 m up on a REP-103 base, optical axes.
EXTRINSIC = np.eye(4)
EXTRINSIC[:3, :3] = R_BODY_OPTICAL
EXTRINSIC[:3, 3] = (0.2, 0.0, 1.2)
_NO_TIME = QosTime(0, 0)
LATCHED_QOS = Qos(QosHistory.KEEP_LAST, 1, QosReliability.RELIABLE, QosDurability.TRANSIENT_LOCAL,
                  _NO_TIME, _NO_TIME, QosLiveliness.AUTOMATIC, _NO_TIME, False)


def map_from_odom(seed) -> np.ndarray:
    """Return a fixed, non-identity 4 x 4 ``T_map_odom`` drawn from ``seed``."""
    rng = np.random.default_rng([seed, 7])
    matrix = np.eye(4)
    matrix[:3, :3] = Rotation.from_euler('z', rng.uniform(0.3, 2.8)).as_matrix()
    matrix[:3, 3] = (*rng.uniform(-4.0, 4.0, 2), 0.0)
    return matrix


def pose_dict(matrix):
    """Return {'position': [3], 'orientation_xyzw': [4]} of a 4 x 4 pose."""
    quat = Rotation.from_matrix(matrix[:3, :3]).as_quat()
    quat = -quat if quat[3] < 0 else quat
    return {'position': matrix[:3, 3].tolist(), 'orientation_xyzw': quat.tolist()}


class RosbagWriter:
    """Writes rendered frames into one rosbag2 recording (see the module docstring)."""

    def __init__(self, bag_path, intrinsics, storage='mcap', rate_hz=30.0, compressed=None,
                 seed=0, start_ns=START_NS):
        """Open a new bag folder ``bag_path`` (it must not exist).

        Args:
            bag_path: the rosbag2 folder to create.
            intrinsics: camera intrinsics of the frames (for camera_info and the sidecar).
            storage: 'mcap' or 'sqlite3'.
            rate_hz: frame rate of the stamps.
            compressed: None, 'jpeg' or 'png': also write the compressed image topic.
            seed: draws the fixed ``T_map_odom``.
            start_ns: stamp of the first frame.
        """
        if storage not in STORAGES:
            raise ValueError(f'storage must be one of {tuple(STORAGES)}, got {storage!r}')
        if compressed not in (None, *COMPRESSED_FORMATS):
            raise ValueError(f'compressed must be None or one of {COMPRESSED_FORMATS}')
        self.bag_path = Path(bag_path)
        self.intrinsics = intrinsics
        self.storage = storage
        self.compressed = compressed
        self.period_ns = int(round(1e9 / rate_hz))
        self.rate_hz = rate_hz
        self.map_odom = map_from_odom(seed)
        self.odom_map = np.linalg.inv(self.map_odom)
        self.camera_base = np.linalg.inv(EXTRINSIC)
        self.types = typestore()
        self.next_stamp = start_ns
        self.current = None
        self.sequences = []
        self.bag_path.parent.mkdir(parents=True, exist_ok=True)
        self.writer = Writer(self.bag_path, version=8, storage_plugin=STORAGES[storage])
        self.writer.open()
        self.connections = {}
        for key, msgtype in (('image', 'sensor_msgs/msg/Image'),
                             ('camera_info', 'sensor_msgs/msg/CameraInfo'),
                             ('pose', 'geometry_msgs/msg/PoseStamped'),
                             ('scene', 'std_msgs/msg/String'),
                             ('tf', 'tf2_msgs/msg/TFMessage'),
                             ('tf_static', 'tf2_msgs/msg/TFMessage'),
                             ('ground_truth_tf_static', 'tf2_msgs/msg/TFMessage')):
            qos = (LATCHED_QOS,) if key.endswith('tf_static') else ()
            self.connections[key] = self.writer.add_connection(
                TOPICS[key], msgtype, typestore=self.types, offered_qos_profiles=qos)
        if compressed:
            self.connections['compressed'] = self.writer.add_connection(
                TOPICS['compressed'], 'sensor_msgs/msg/CompressedImage', typestore=self.types)
        self._write_tf('tf_static', start_ns, FRAMES['base'], FRAMES['camera'], EXTRINSIC)
        self._write_tf('ground_truth_tf_static', start_ns, FRAMES['map'], FRAMES['odom'],
                       self.map_odom)

    def add(self, frame):
        """Write every topic of one frame at the next stamp."""
        plan = frame.plan
        if self.current is not plan:
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
        map_base = frame.pose @ self.camera_base
        self._write('scene', stamp, self._msg('std_msgs/msg/String', data=plan.scene))
        self._write_tf('tf', stamp, FRAMES['odom'], FRAMES['base'], self.odom_map @ map_base)
        self._write('pose', stamp, self._msg(
            'geometry_msgs/msg/PoseStamped', header=self._header(stamp, FRAMES['map']),
            pose=self._pose(frame.pose)))
        self._write('camera_info', stamp, self._camera_info(stamp))
        fields = rgb_to_image_fields(frame.rgb, 'rgb8')
        self._write('image', stamp, self._msg(
            'sensor_msgs/msg/Image', header=self._header(stamp, FRAMES['camera']),
            height=fields.height, width=fields.width, encoding=fields.encoding, is_bigendian=0,
            step=fields.step, data=np.frombuffer(fields.data, dtype=np.uint8)))
        if self.compressed:
            payload = encode_compressed(frame.rgb, self.compressed)
            self._write('compressed', stamp, self._msg(
                'sensor_msgs/msg/CompressedImage', header=self._header(stamp, FRAMES['camera']),
                format=self.compressed, data=np.frombuffer(payload, dtype=np.uint8)))

    def metadata(self):
        """Return the JSON-ready description of the recording."""
        return {
            'format': 'mspr_synth_bag', 'version': 1, 'storage': self.storage,
            'rate_hz': self.rate_hz, 'topics': TOPICS, 'frames': FRAMES,
            'compressed': self.compressed, 'sequences': self.sequences,
            'scenes': sorted({s['scene'] for s in self.sequences}),
            'map_from_scene': 'identity: every scene frame is the map frame',
            'intrinsics': self.intrinsics.to_dict(),
            'T_map_odom': pose_dict(self.map_odom), 'T_base_camera': pose_dict(EXTRINSIC),
        }

    def close(self):
        """Finish the bag, write ``<bag>.json`` and return the metadata dict."""
        metadata = self.metadata()
        self.writer.set_custom_data('mspr_synth', json.dumps(metadata))
        self.writer.close()
        sidecar_path(self.bag_path).write_text(json.dumps(metadata, indent=2) + '\n')
        return metadata

    def _write(self, key, stamp, message):
        """Serialise and write a message on a topic key at ``stamp`` (also its log time)."""
        self.writer.write(self.connections[key], stamp,
                          self.types.serialize_cdr(message, message.__msgtype__))

    def _msg(self, msgtype, **fields):
        """Return a message object of ``msgtype``."""
        return self.types.types[msgtype](**fields)

    def _header(self, stamp, frame_id):
        """Return a std_msgs/Header."""
        time = self._msg('builtin_interfaces/msg/Time', sec=stamp // 1_000_000_000,
                         nanosec=stamp % 1_000_000_000)
        return self._msg('std_msgs/msg/Header', stamp=time, frame_id=frame_id)

    def _pose(self, matrix):
        """Return a geometry_msgs/Pose of a 4 x 4 matrix."""
        values = pose_dict(matrix)
        x, y, z = values['position']
        qx, qy, qz, qw = values['orientation_xyzw']
        return self._msg('geometry_msgs/msg/Pose',
                         position=self._msg('geometry_msgs/msg/Point', x=x, y=y, z=z),
                         orientation=self._msg('geometry_msgs/msg/Quaternion', x=qx, y=qy,
                                               z=qz, w=qw))

    def _write_tf(self, key, stamp, parent, child, matrix):
        """Write one transform ``T_parent_child`` as a tf2_msgs/TFMessage."""
        pose = self._pose(matrix)
        transform = self._msg(
            'geometry_msgs/msg/Transform',
            translation=self._msg('geometry_msgs/msg/Vector3', x=pose.position.x,
                                  y=pose.position.y, z=pose.position.z),
            rotation=pose.orientation)
        item = self._msg('geometry_msgs/msg/TransformStamped',
                         header=self._header(stamp, parent), child_frame_id=child,
                         transform=transform)
        self._write(key, stamp, self._msg('tf2_msgs/msg/TFMessage', transforms=[item]))

    def _camera_info(self, stamp):
        """Return the sensor_msgs/CameraInfo of the intrinsics."""
        k = self.intrinsics.matrix()
        projection = np.hstack([k, np.zeros((3, 1))])
        roi = self._msg('sensor_msgs/msg/RegionOfInterest', x_offset=0, y_offset=0, height=0,
                        width=0, do_rectify=False)
        return self._msg(
            'sensor_msgs/msg/CameraInfo', header=self._header(stamp, FRAMES['camera']),
            height=self.intrinsics.height, width=self.intrinsics.width,
            distortion_model='plumb_bob', d=np.zeros(5), k=k.ravel(), r=np.eye(3).ravel(),
            p=projection.ravel(), binning_x=0, binning_y=0, roi=roi)


def sidecar_path(bag_path) -> Path:
    """Return ``<bag>.json`` beside a bag folder."""
    bag_path = Path(bag_path)
    return bag_path.with_name(bag_path.name + '.json')
