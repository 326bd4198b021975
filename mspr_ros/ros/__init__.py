"""The thin ROS 2 shell: lifecycle node, parameters, message conversion, TF and diagnostics.

The only part of ``mspr_ros`` that imports rclpy or ROS message packages.
"""
