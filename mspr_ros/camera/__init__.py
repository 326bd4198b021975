"""Cameras: intrinsics and distortion, and bringing an image to another camera.

``model`` (CameraModel), ``reprojection`` (the remap into the training camera, built once per
camera), ``selection`` (the node's ``camera_model`` rule) and ``topics`` (where ``camera_info``
is published). A leaf of the core: numpy and OpenCV only.
"""
