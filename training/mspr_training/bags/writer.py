"""The one rosbag2 writer of the project: typed messages into an mcap or sqlite3 bag via rosbags.

``BagWriter`` opens a new bag folder (rosbag2 metadata version 8, read by Iron and newer),
registers a connection per topic (up front with ``add_topic``, or on a topic's first message) and
has one method per message kind the tools write: ``Image``, ``CompressedImage``, ``CameraInfo``,
``PoseStamped``, ``PoseWithCovarianceStamped``, ``Odometry``, ``tf2_msgs/TFMessage``,
``String`` and ``Float32``. Poses and transforms are ``mspr_ros.geometry.transforms.Transform``;
their quaternions are written canonical (``w >= 0``), the project's one sign convention.

Users: the rendered world's recordings (``mspr_training.synth.rosbag_writer``),
``mspr-bag-from-dataset`` and ``mspr-bag-eval --write-bag``. Every message is logged at its
header stamp unless a caller gives another log time.
"""
from pathlib import Path

import numpy as np
from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability
from rosbags.interfaces import QosTime
from rosbags.rosbag2 import StoragePlugin, Writer

from mspr_ros.camera.model import CameraModel
from mspr_ros.geometry.transforms import canonical_quaternion, Transform
from mspr_ros.image_conversion import rgb_to_image_fields
from mspr_training.data.rosbag import typestore

STORAGES = {'mcap': StoragePlugin.MCAP, 'sqlite3': StoragePlugin.SQLITE3}
#: rosbag2 metadata version written (read by Iron and newer).
BAG_VERSION = 8
NS_PER_S = 1_000_000_000
_NO_TIME = QosTime(0, 0)
#: The QoS ``/tf_static`` publishers offer: a late subscriber (a bag player's) still gets it.
LATCHED_QOS = Qos(QosHistory.KEEP_LAST, 1, QosReliability.RELIABLE, QosDurability.TRANSIENT_LOCAL,
                  _NO_TIME, _NO_TIME, QosLiveliness.AUTOMATIC, _NO_TIME, False)
_GEOMETRY = 'geometry_msgs/msg/'


class BagWriter:
    """A rosbag2 recording being written, one method per message kind (module docstring).

    Use as a context manager (or call ``close``); the bag is complete when it is closed.
    """

    def __init__(self, path, storage: str = 'mcap'):
        """Open a new bag folder ``path`` (must not exist) in ``storage`` 'mcap' or 'sqlite3'.

        Raises:
            ValueError: unknown storage. FileExistsError: ``path`` exists.
        """
        if storage not in STORAGES:
            raise ValueError(f'storage must be one of {tuple(STORAGES)}, got {storage!r}')
        self.path = Path(path)
        if self.path.exists():
            raise FileExistsError(f'{self.path}: already exists; rosbag2 writers never overwrite')
        self.storage = storage
        self.types = typestore()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = Writer(self.path, version=BAG_VERSION, storage_plugin=STORAGES[storage])
        self._writer.open()
        self._connections = {}

    def __enter__(self):
        """Return the open writer."""
        return self

    def __exit__(self, *exc_info):
        """Finish the bag (writes metadata.yaml)."""
        self.close()

    def close(self):
        """Finish the bag (writes metadata.yaml); closing twice does nothing."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def set_custom_data(self, key: str, value: str):
        """Store a string in the bag's metadata ``custom_data`` (read back by ``Reader``)."""
        self._writer.set_custom_data(key, value)

    def add_topic(self, topic: str, msgtype: str, latched: bool = False):
        """Register ``topic`` now (so it exists even without messages); ``latched``: tf_static QoS.

        Raises:
            ValueError: the topic is already registered with another type.
        """
        connection = self._connections.get(topic)
        if connection is not None:
            if connection.msgtype != msgtype:
                raise ValueError(f'{topic}: registered as {connection.msgtype}, not {msgtype}')
            return
        qos = (LATCHED_QOS,) if latched else ()
        self._connections[topic] = self._writer.add_connection(
            topic, msgtype, typestore=self.types, offered_qos_profiles=qos)

    def write(self, topic: str, log_time_ns: int, message):
        """Serialise ``message`` and write it on ``topic`` at ``log_time_ns``."""
        self.add_topic(topic, message.__msgtype__)
        self._writer.write(self._connections[topic], int(log_time_ns),
                           self.types.serialize_cdr(message, message.__msgtype__))

    def message(self, msgtype: str, **fields):
        """Return a message object of ``msgtype`` (e.g. ``'std_msgs/msg/String'``)."""
        return self.types.types[msgtype](**fields)

    def header(self, stamp_ns: int, frame_id: str):
        """Return a ``std_msgs/Header``."""
        seconds, nanoseconds = divmod(int(stamp_ns), NS_PER_S)
        stamp = self.message('builtin_interfaces/msg/Time', sec=seconds, nanosec=nanoseconds)
        return self.message('std_msgs/msg/Header', stamp=stamp, frame_id=frame_id)

    def pose(self, transform: Transform):
        """Return the ``geometry_msgs/Pose`` of a transform (canonical quaternion)."""
        x, y, z = (float(v) for v in transform.translation)
        return self.message(_GEOMETRY + 'Pose',
                            position=self.message(_GEOMETRY + 'Point', x=x, y=y, z=z),
                            orientation=self._quaternion(transform))

    def _quaternion(self, transform: Transform):
        qx, qy, qz, qw = (float(v) for v in canonical_quaternion(transform.rotation))
        return self.message(_GEOMETRY + 'Quaternion', x=qx, y=qy, z=qz, w=qw)

    def _pose_with_covariance(self, transform: Transform, covariance):
        return self.message(_GEOMETRY + 'PoseWithCovariance', pose=self.pose(transform),
                            covariance=np.asarray(covariance, dtype=np.float64).reshape(36))

    def write_image(self, topic, stamp_ns, frame_id, rgb: np.ndarray, log_time_ns=None):
        """Write an H x W x 3 uint8 RGB array as a ``sensor_msgs/Image`` (rgb8, unpadded rows)."""
        fields = rgb_to_image_fields(np.ascontiguousarray(rgb, dtype=np.uint8), 'rgb8')
        self.write(topic, _log_time(stamp_ns, log_time_ns), self.message(
            'sensor_msgs/msg/Image', header=self.header(stamp_ns, frame_id),
            height=fields.height, width=fields.width, encoding=fields.encoding, is_bigendian=0,
            step=fields.step, data=np.frombuffer(fields.data, dtype=np.uint8)))

    def write_compressed(self, topic, stamp_ns, frame_id, payload: bytes, fmt: str,
                         log_time_ns=None):
        """Write a JPEG or PNG payload as a ``sensor_msgs/CompressedImage`` (``fmt`` jpeg|png)."""
        self.write(topic, _log_time(stamp_ns, log_time_ns), self.message(
            'sensor_msgs/msg/CompressedImage', header=self.header(stamp_ns, frame_id),
            format=fmt, data=np.frombuffer(payload, dtype=np.uint8)))

    def write_camera_info(self, topic, stamp_ns, frame_id, camera: CameraModel,
                          log_time_ns=None):
        """Write ``camera`` as a ``sensor_msgs/CameraInfo``.

        ``distortion_model`` and ``d`` are the camera's (a pinhole as ``plumb_bob`` with five
        zeros, as ROS camera drivers publish one), ``k`` its matrix, ``r`` the identity and
        ``p`` = [K | 0] (a monocular camera, no rectification).
        """
        k = camera.matrix()
        projection = np.hstack([k, np.zeros((3, 1))])
        if camera.is_pinhole:
            model, coefficients = 'plumb_bob', np.zeros(5)
        else:
            model, coefficients = camera.distortion_model, camera.distortion_vector()
        roi = self.message('sensor_msgs/msg/RegionOfInterest', x_offset=0, y_offset=0,
                           height=0, width=0, do_rectify=False)
        self.write(topic, _log_time(stamp_ns, log_time_ns), self.message(
            'sensor_msgs/msg/CameraInfo', header=self.header(stamp_ns, frame_id),
            height=camera.height, width=camera.width, distortion_model=model, d=coefficients,
            k=k.ravel(), r=np.eye(3).ravel(), p=projection.ravel(), binning_x=0, binning_y=0,
            roi=roi))

    def write_pose(self, topic, stamp_ns, frame_id, transform: Transform, log_time_ns=None):
        """Write ``transform`` as a ``geometry_msgs/PoseStamped`` in ``frame_id``."""
        self.write(topic, _log_time(stamp_ns, log_time_ns), self.message(
            _GEOMETRY + 'PoseStamped', header=self.header(stamp_ns, frame_id),
            pose=self.pose(transform)))

    def write_pose_with_covariance(self, topic, stamp_ns, frame_id, transform: Transform,
                                   covariance: np.ndarray, log_time_ns=None):
        """Write a ``PoseWithCovarianceStamped``; ``covariance`` (6, 6) in ROS order."""
        self.write(topic, _log_time(stamp_ns, log_time_ns), self.message(
            _GEOMETRY + 'PoseWithCovarianceStamped', header=self.header(stamp_ns, frame_id),
            pose=self._pose_with_covariance(transform, covariance)))

    def write_odometry(self, topic, stamp_ns, frame_id, child_frame_id, transform: Transform,
                       covariance=None, log_time_ns=None):
        """Write a ``nav_msgs/Odometry`` pose (twist zero; covariances zero when not given)."""
        vector = self.message(_GEOMETRY + 'Vector3', x=0.0, y=0.0, z=0.0)
        twist = self.message(_GEOMETRY + 'TwistWithCovariance',
                             twist=self.message(_GEOMETRY + 'Twist', linear=vector,
                                                angular=vector),
                             covariance=np.zeros(36))
        covariance = np.zeros((6, 6)) if covariance is None else covariance
        self.write(topic, _log_time(stamp_ns, log_time_ns), self.message(
            'nav_msgs/msg/Odometry', header=self.header(stamp_ns, frame_id),
            child_frame_id=child_frame_id,
            pose=self._pose_with_covariance(transform, covariance), twist=twist))

    def write_transforms(self, topic, stamp_ns, transforms, log_time_ns=None):
        """Write ``[(parent, child, T_parent_child), ...]`` as one ``tf2_msgs/TFMessage``."""
        items = []
        for parent, child, transform in transforms:
            x, y, z = (float(v) for v in transform.translation)
            items.append(self.message(
                _GEOMETRY + 'TransformStamped', header=self.header(stamp_ns, parent),
                child_frame_id=child, transform=self.message(
                    _GEOMETRY + 'Transform',
                    translation=self.message(_GEOMETRY + 'Vector3', x=x, y=y, z=z),
                    rotation=self._quaternion(transform))))
        self.write(topic, _log_time(stamp_ns, log_time_ns),
                   self.message('tf2_msgs/msg/TFMessage', transforms=items))

    def write_transform(self, topic, stamp_ns, parent, child, transform: Transform,
                        log_time_ns=None):
        """Write one ``T_parent_child`` as a ``tf2_msgs/TFMessage``."""
        self.write_transforms(topic, stamp_ns, [(parent, child, transform)], log_time_ns)

    def write_string(self, topic, log_time_ns, text: str):
        """Write a ``std_msgs/String``."""
        self.write(topic, log_time_ns, self.message('std_msgs/msg/String', data=text))

    def write_float32(self, topic, log_time_ns, value: float):
        """Write a ``std_msgs/Float32``."""
        self.write(topic, log_time_ns, self.message('std_msgs/msg/Float32', data=float(value)))


def _log_time(stamp_ns, log_time_ns):
    """Return the log time of a stamped message: its stamp unless given."""
    return stamp_ns if log_time_ns is None else log_time_ns
