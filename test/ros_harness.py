"""Helpers for tests that talk to the localizer node over real DDS.

The node process and the in-process client are shared with the benchmarks and live in the
training package: ``mspr_training.node_process`` (``domain_id``: a ROS domain per test module and
CLI test; ``ros_env``; ``NodeProcess``: the node in its own process group, one OpenMP thread,
stopped by SIGINT then SIGKILL) and ``mspr_training.ros_client`` (``RosClient``, ``Inbox``,
``wait_until``: waits on deadlines, no sleep polling). This module re-exports them under the
names the tests use, with tf2's QoS profiles from ``mspr_ros.ros.tf``, and adds what only the
tests need: the QoS a user subscribes to latched outputs with, and small real photos.
"""
from pathlib import Path
import sys
from typing import Dict

import cv2
from geometry_msgs.msg import TransformStamped
import numpy as np
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from scipy.spatial.transform import Rotation

from mspr_ros.ros.conversions import ns_to_stamp
from mspr_ros.ros.tf import TF_QOS  # noqa: F401 - tf2's profiles, as the node's listener
from mspr_ros.ros.tf import TF_STATIC_LISTENER_QOS as TF_STATIC_QOS  # noqa: F401
from mspr_training.node_process import domain_id, NODE_NAME, NodeProcess  # noqa: F401
from mspr_training.node_process import param_args, prepare_environment, ros_env  # noqa: F401
from mspr_training.node_process import START_TIMEOUT_S, stop_all  # noqa: F401
from mspr_training.node_process import stop_process_group  # noqa: F401
from mspr_training.ros_client import diagnostic_values, Inbox, own_status  # noqa: F401
from mspr_training.ros_client import RosClient, wait_until  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
# What a user subscribes to latched outputs (pose, scene) with, as to AMCL's amcl_pose.
RELIABLE_LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                              durability=DurabilityPolicy.TRANSIENT_LOCAL)

# Every process the tests start (and this one) moves images over Fast DDS shared memory.
prepare_environment()


def transform_msg(m, parent, child, stamp_ns) -> TransformStamped:
    """Return the ``TransformStamped`` ``parent -> child`` of a 4x4 matrix at ``stamp_ns``."""
    msg = TransformStamped()
    msg.header.stamp = ns_to_stamp(stamp_ns)
    msg.header.frame_id, msg.child_frame_id = parent, child
    msg.transform.translation.x, msg.transform.translation.y, msg.transform.translation.z = (
        float(v) for v in m[:3, 3])
    q = Rotation.from_matrix(m[:3, :3]).as_quat()
    r = msg.transform.rotation
    r.x, r.y, r.z, r.w = (float(v) for v in q)
    return msg


def small_photos(size=(160, 120)) -> Dict[str, np.ndarray]:
    """Real photos from ``skimage.data`` resized to ``size`` (width, height), uint8 RGB."""
    from skimage import data
    photos = {'astronaut': data.astronaut(), 'coffee': data.coffee(), 'chelsea': data.chelsea()}
    return {name: np.ascontiguousarray(cv2.resize(img, size, interpolation=cv2.INTER_AREA))
            for name, img in photos.items()}
