"""Camera frames for the node benchmarks: rendered images of the synthetic world."""
from typing import List

import numpy as np

from common.models import SCENE_NAMES
from mspr_ros.camera.model import CameraModel
from mspr_training.synth import build_world, plan_sequences
from mspr_training.synth.sequences import render_frames


def rendered_frames(count: int, size: tuple = (640, 480), seed: int = 0) -> List[np.ndarray]:
    """Return ``count`` rendered ``H x W x 3`` uint8 frames of the synthetic world.

    Frames walk each scene's test path in turn, so consecutive frames differ like a camera's.
    """
    world = build_world(seed, len(SCENE_NAMES))
    per_scene = -(-count // len(world.scenes))
    plans = [plan for plan in plan_sequences(world, train_frames=1, test_frames=per_scene,
                                             train_sequences=1, test_sequences=1)
             if plan.split == 'test']
    frames = [frame.rgb for frame in render_frames(world, plans, CameraModel.from_fov(*size))]
    return frames[:count]
