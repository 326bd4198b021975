"""Initial poses into the map frame: from ``/initialpose`` messages and AMCL's parameters."""
import math
from typing import Tuple

import numpy as np

from mspr_ros.geometry.transforms import Transform
from mspr_ros.ros.conversions import covariance_from_msg, pose_from_msg
from mspr_ros.ros.params import NodeParams

# AMCL's initial_cov_xx, initial_cov_yy, initial_cov_aa defaults; z, roll, pitch as well known
# as the ground the robot stands on.
PARAMETER_POSE_COVARIANCE = np.diag([0.25, 0.25, 0.01, 0.01, 0.01, 0.068535])


def prior_from_parameters(params: NodeParams) -> Tuple[Transform, np.ndarray]:
    """Return the pose of ``initial_pose.{x, y, z, yaw}`` and AMCL's default covariance."""
    x, y, z, yaw = params.initial_pose
    return Transform.from_xyz_rpy([x, y, z], [0.0, 0.0, yaw]), PARAMETER_POSE_COVARIANCE.copy()


def prior_from_msg(msg, params: NodeParams, listener) -> Tuple[Transform, np.ndarray]:
    """Return the base pose and covariance of an ``initialpose`` message in the map frame.

    A message in another frame is transformed with the latest TF (RViz stamps with wall time
    even under sim time); no waiting, since this runs on the executor that receives TF.

    Raises:
        TransformUnavailable: no transform from the message's frame into the map.
        ValueError: an invalid pose or covariance.
    """
    frame = msg.header.frame_id or params.global_frame_id
    T_frame_base = pose_from_msg(msg.pose.pose)
    covariance = covariance_from_msg(msg)
    if frame != params.global_frame_id:
        T_map_frame = listener.lookup(params.global_frame_id, frame, None, 0.0)
        T_frame_base = T_map_frame @ T_frame_base
        rotation = np.zeros((6, 6))
        rotation[:3, :3] = rotation[3:, 3:] = T_map_frame.rotation_object.as_matrix()
        covariance = rotation @ covariance @ rotation.T
    return T_frame_base, covariance


def describe(T_map_base: Transform, frame: str) -> str:
    """``x=.., y=.., yaw=.. deg in <frame>`` for logs."""
    x, y, _ = T_map_base.translation
    return f'x={x:.2f}, y={y:.2f}, yaw={math.degrees(T_map_base.yaw()):.1f} deg in {frame}'
