"""The rendered multi-scene world: geometry, renderer, camera paths and dataset writers.

``build_world`` makes the scenes, ``plan_sequences`` their camera paths, ``render`` draws a
view, the ``write_*`` functions and ``generate`` (CLI ``mspr-synth``) write datasets and bags.
Cameras are ``mspr_ros.camera.model.CameraModel`` (``wide_camera``: a distorted wide-angle one).
"""
from mspr_training.synth.camera import camera_pose, wide_camera
from mspr_training.synth.camera_paths import PathStyle, plan_path
from mspr_training.synth.generate import generate, Manifest
from mspr_training.synth.render import Lighting, render, RenderResult
from mspr_training.synth.sequences import plan_sequences, RenderedFrame, SequencePlan
from mspr_training.synth.world import build_world, Scene, World
from mspr_training.synth.writers import write_7scenes, write_cambridge, write_rosbag

__all__ = [
    'build_world', 'camera_pose', 'generate', 'Lighting', 'Manifest', 'PathStyle', 'plan_path',
    'plan_sequences', 'render', 'RenderedFrame', 'RenderResult', 'Scene', 'SequencePlan',
    'wide_camera', 'World', 'write_7scenes', 'write_cambridge', 'write_rosbag',
]
