"""Conversions between ROS messages and the ROS-free core types.

Time is carried as integer nanoseconds, transforms as ``mspr_ros.geometry.transforms.Transform``,
images as ``H x W x 3`` uint8 RGB arrays. Images, raw and compressed, go through the core's
``mspr_ros.image_conversion`` on every install. ROS 2's ``cv_bridge`` is not used: it cannot be
installed where CI runs (no wheel; PyPI's ``cv-bridge`` is the ROS 1 package and breaks with
numpy 2), so a cv_bridge path would run on robots untested; the core converter covers every
encoding the node accepts, is tested here, and refuses oversized images from the header before
copying a pixel.
"""
from typing import Tuple

from builtin_interfaces.msg import Time
from geometry_msgs.msg import Pose, PoseStamped, PoseWithCovarianceStamped
from geometry_msgs.msg import Transform as TransformMsg
from geometry_msgs.msg import TransformStamped
from nav_msgs.msg import Odometry
import numpy as np
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from mspr_ros.camera.model import CameraModel
from mspr_ros.geometry.covariance import flatten_row_major
from mspr_ros.geometry.transforms import Transform
from mspr_ros.image_conversion import decode_compressed, encode_compressed, image_to_rgb
from mspr_ros.image_conversion import rgb_to_image_fields

NANOSECONDS_PER_SECOND = 1_000_000_000


def stamp_to_ns(stamp: Time) -> int:
    """Return a ``builtin_interfaces/Time`` as integer nanoseconds."""
    return int(stamp.sec) * NANOSECONDS_PER_SECOND + int(stamp.nanosec)


def ns_to_stamp(nanoseconds: int) -> Time:
    """Return integer nanoseconds (>= 0) as a ``builtin_interfaces/Time``."""
    seconds, nanos = divmod(int(nanoseconds), NANOSECONDS_PER_SECOND)
    return Time(sec=seconds, nanosec=nanos)


def transform_from_msg(msg: TransformMsg) -> Transform:
    """Return a ``geometry_msgs/Transform`` as a core ``Transform`` (T_parent_child)."""
    t, q = msg.translation, msg.rotation
    return Transform.from_xyz_quat([t.x, t.y, t.z], [q.x, q.y, q.z, q.w])


def transform_to_msg(transform: Transform, parent: str, child: str,
                     stamp_ns: int) -> TransformStamped:
    """Return ``T_parent_child`` as a ``TransformStamped`` (header.frame_id = parent, w >= 0)."""
    transform = transform.canonical()
    msg = TransformStamped()
    msg.header.stamp = ns_to_stamp(stamp_ns)
    msg.header.frame_id = parent
    msg.child_frame_id = child
    x, y, z = (float(v) for v in transform.translation)
    msg.transform.translation.x, msg.transform.translation.y, msg.transform.translation.z = x, y, z
    qx, qy, qz, qw = (float(v) for v in transform.rotation)
    rotation = msg.transform.rotation
    rotation.x, rotation.y, rotation.z, rotation.w = qx, qy, qz, qw
    return msg


def pose_to_msg(transform: Transform) -> Pose:
    """Return ``T_frame_body`` as the ``geometry_msgs/Pose`` of the body in the frame (w >= 0)."""
    transform = transform.canonical()
    pose = Pose()
    pose.position.x, pose.position.y, pose.position.z = (float(v) for v in transform.translation)
    q = pose.orientation
    q.x, q.y, q.z, q.w = (float(v) for v in transform.rotation)
    return pose


def pose_from_msg(pose: Pose) -> Transform:
    """Inverse of ``pose_to_msg``; raises ValueError on a zero or non-finite quaternion."""
    p, q = pose.position, pose.orientation
    return Transform.from_xyz_quat([p.x, p.y, p.z], [q.x, q.y, q.z, q.w])


def pose_stamped(transform: Transform, frame_id: str, stamp_ns: int) -> PoseStamped:
    """Return a ``PoseStamped`` of ``transform`` in ``frame_id``."""
    msg = PoseStamped()
    msg.header.stamp = ns_to_stamp(stamp_ns)
    msg.header.frame_id = frame_id
    msg.pose = pose_to_msg(transform)
    return msg


def pose_with_covariance_stamped(transform: Transform, covariance: np.ndarray, frame_id: str,
                                 stamp_ns: int) -> PoseWithCovarianceStamped:
    """Return a ``PoseWithCovarianceStamped``; ``covariance`` is (6, 6), ROS order."""
    msg = PoseWithCovarianceStamped()
    msg.header.stamp = ns_to_stamp(stamp_ns)
    msg.header.frame_id = frame_id
    msg.pose.pose = pose_to_msg(transform)
    msg.pose.covariance = flatten_row_major(covariance)
    return msg


def covariance_from_msg(msg: PoseWithCovarianceStamped) -> np.ndarray:
    """Return the (6, 6) covariance of a ``PoseWithCovarianceStamped``."""
    return np.asarray(msg.pose.covariance, dtype=np.float64).reshape(6, 6)


def odometry_transform(msg: Odometry) -> Tuple[str, str, int, Transform]:
    """Return ``(parent, child, stamp_ns, T_parent_child)`` of a ``nav_msgs/Odometry``."""
    return (msg.header.frame_id, msg.child_frame_id, stamp_to_ns(msg.header.stamp),
            pose_from_msg(msg.pose.pose))


def rgb_to_image_msg(rgb: np.ndarray, encoding: str, stamp_ns: int, frame_id: str) -> Image:
    """Return an ``H x W x 3`` uint8 RGB array as a ``sensor_msgs/Image`` in ``encoding``."""
    fields = rgb_to_image_fields(rgb, encoding)
    msg = Image()
    msg.header.stamp = ns_to_stamp(stamp_ns)
    msg.header.frame_id = frame_id
    msg.height, msg.width = int(fields.height), int(fields.width)
    msg.encoding = fields.encoding
    msg.is_bigendian = 0
    msg.step = int(fields.step)
    msg.data = bytes(fields.data)
    return msg


def rgb_to_compressed_msg(rgb: np.ndarray, fmt: str, stamp_ns: int,
                          frame_id: str) -> CompressedImage:
    """Return an RGB array as a ``sensor_msgs/CompressedImage`` (``fmt`` 'jpeg' or 'png')."""
    msg = CompressedImage()
    msg.header.stamp = ns_to_stamp(stamp_ns)
    msg.header.frame_id = frame_id
    msg.format = fmt
    msg.data = bytes(encode_compressed(rgb, fmt))
    return msg


def camera_from_info(msg: CameraInfo) -> CameraModel:
    """Return the camera of the images a ``sensor_msgs/CameraInfo`` describes.

    ``k`` and ``d`` describe the full-resolution sensor; a region of interest and then binning
    (REP-104) make the published image a window of it, shrunk: the camera follows both. ``r``
    and ``p`` (stereo rectification) are not read (``CameraModel.from_camera_info``).

    Raises:
        ValueError: the message states no valid camera (an uncalibrated all-zero ``k``, an
            unknown distortion model, a wrong coefficient count), saying which.
    """
    camera = CameraModel.from_camera_info(msg.width, msg.height, msg.distortion_model,
                                          list(msg.d), list(msg.k))
    roi = msg.roi
    if roi.width and roi.height and (roi.width, roi.height) != (msg.width, msg.height):
        camera = camera.cropped(roi.x_offset, roi.y_offset, roi.width, roi.height)
    binning_x, binning_y = max(int(msg.binning_x), 1), max(int(msg.binning_y), 1)
    if binning_x > 1 or binning_y > 1:
        camera = camera.scaled(camera.width // binning_x, camera.height // binning_y)
    return camera


class ImageDecoder:
    """Turn ``Image`` / ``CompressedImage`` messages into ``H x W x 3`` uint8 RGB arrays.

    Every failure raises ``ImageConversionError`` whose message says what is wrong with the
    message (size, step, encoding, corrupt data).
    """

    def __init__(self, max_pixels: int):
        """Refuse images of more than ``max_pixels`` pixels."""
        self.max_pixels = int(max_pixels)

    @property
    def backend(self) -> str:
        """The converter's name, for diagnostics."""
        return 'mspr_ros.image_conversion'

    def raw(self, msg: Image) -> np.ndarray:
        """Convert a ``sensor_msgs/Image``; the pixel limit is checked before any copy."""
        return image_to_rgb(msg.height, msg.width, msg.encoding, msg.step, msg.data,
                            is_bigendian=bool(msg.is_bigendian), max_pixels=self.max_pixels)

    def compressed(self, msg: CompressedImage) -> np.ndarray:
        """Convert a ``sensor_msgs/CompressedImage`` (JPEG or PNG)."""
        return decode_compressed(msg.data, max_pixels=self.max_pixels)
