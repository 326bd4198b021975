"""Rigid transforms, rotations, frame chains, pose covariance and the TF history (ROS-free)."""
