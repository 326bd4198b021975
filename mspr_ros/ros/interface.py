"""The node's public names and QoS, defined once (no side effects beyond importing rclpy.qos).

Benchmarks, tools and tests import these instead of repeating them: ``NODE_NAME``, the topic and
service names (relative names resolve in the node's namespace, ``~/`` under its name, as
AMCL's) and the QoS profiles the node creates its endpoints with.
"""
from rclpy.qos import DurabilityPolicy, qos_profile_sensor_data, qos_profile_system_default
from rclpy.qos import QoSProfile, ReliabilityPolicy

NODE_NAME = 'mspr_localizer'

IMAGE_TOPIC = 'image'
COMPRESSED_IMAGE_TOPIC = 'image/compressed'
INITIALPOSE_TOPIC = 'initialpose'
ODOM_TOPIC = 'odom'
POSE_TOPIC = '~/pose'
POSE_RAW_TOPIC = '~/pose_raw'
# The per-frame pose thinned for a Kalman filter (mspr_ros.estimation.filter_updates): what
# robot_localization fuses as pose0, each message a new measurement.
POSE_UPDATE_TOPIC = '~/pose_update'
CAMERA_POSE_TOPIC = '~/camera_pose'
SCENE_TOPIC = '~/scene'
# The camera pose as regressed, in its scene's own frame: header.frame_id names the scene (the
# child frame of map -> <scene> on /tf_static) and the stamp is the image's, so a recording
# pairs each ~/pose_raw with its scene by stamp (mspr-align), which the unstamped ~/scene cannot.
SCENE_CAMERA_POSE_TOPIC = '~/scene_camera_pose'
SCENE_CONFIDENCE_TOPIC = '~/scene_confidence'
DIAGNOSTICS_TOPIC = '/diagnostics'
RELOCALIZE_SERVICE = '~/relocalize'
# AMCL's service name, but private: beside AMCL (config/setup_amcl.yaml) the two must not collide.
REINITIALIZE_SERVICE = '~/reinitialize_global_localization'

# Latched like AMCL's amcl_pose: late joiners get the last pose; volatile subscribers match.
POSE_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL)
INITIALPOSE_QOS = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
IMAGE_QOS = {
    'sensor_data': qos_profile_sensor_data,
    'reliable': QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE),
    'system_default': qos_profile_system_default,
}
ODOM_QOS_DEPTH = 50
OUTPUT_QOS_DEPTH = 10


def image_topic(image_transport: str) -> str:
    """Topic of the ``image_transport`` ('raw' or 'compressed') subscription."""
    return IMAGE_TOPIC if image_transport == 'raw' else COMPRESSED_IMAGE_TOPIC
