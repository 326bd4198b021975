"""The echo node of ``benchmarks/latency.py``: each image comes back at once as an empty pose.

A program (``python benchmarks/echo_node.py``) that ``common.node_session.NodeSession`` starts
with ``program=ECHO_PROGRAM`` in place of the localizer. The pose carries the
image's header, on the localizer's topic, QoS and executor (single-threaded), so its round trip
is the floor that any Python ROS node with this interface pays: DDS both ways, (de)serialising
the image and the executor hand-offs, without decoding or inference.
"""
from geometry_msgs.msg import PoseWithCovarianceStamped
import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from sensor_msgs.msg import Image

from mspr_ros.ros.node import IMAGE_QOS, NODE_NAME, POSE_QOS

# The image QoS the benchmarks give the localizer (``image_qos: reliable``).
ECHO_IMAGE_QOS = IMAGE_QOS['reliable']


def main(args=None) -> None:
    """Spin the echo node until interrupted."""
    rclpy.init(args=args)
    node = rclpy.create_node(NODE_NAME)
    poses = node.create_publisher(PoseWithCovarianceStamped, '~/pose', POSE_QOS)

    def echo(image: Image) -> None:
        poses.publish(PoseWithCovarianceStamped(header=image.header))

    node.create_subscription(Image, 'image', echo, ECHO_IMAGE_QOS)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    print('active: waiting for images (echo node)', flush=True)
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == '__main__':
    main()
