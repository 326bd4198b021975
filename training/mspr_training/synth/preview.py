"""Contact sheet of a world: a few rendered frames of each scene, labelled."""
from pathlib import Path

import cv2
import numpy as np

from mspr_training.synth.render import render

LABEL_HEIGHT = 22


def contact_sheet(world, plans, camera, frames_per_scene=4) -> np.ndarray:
    """Return a uint8 RGB contact sheet with one labelled row of frames per scene.

    Each row shows ``frames_per_scene`` frames spread evenly along the scene's first train
    sequence, under a label naming the scene.
    """
    rows = []
    for scene in world.scenes:
        plan = next(p for p in plans if p.scene == scene.name and p.split == 'train')
        indices = np.unique(np.linspace(0, len(plan.poses), frames_per_scene,
                                        endpoint=False).astype(int))
        images = [render(scene, plan.poses[i], camera, plan.lighting).rgb for i in indices]
        strip = np.concatenate(images, axis=1)
        label = np.full((LABEL_HEIGHT, strip.shape[1], 3), 255, dtype=np.uint8)
        cv2.putText(label, f'{scene.name} ({plan.split} seq{plan.number})', (6, 16),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
        rows.extend([label, strip])
    return np.concatenate(rows, axis=0)


def write_preview(path, world, plans, camera, frames_per_scene=4) -> Path:
    """Write the contact sheet as a PNG and return its path."""
    path = Path(path)
    sheet = contact_sheet(world, plans, camera, frames_per_scene)
    if not cv2.imwrite(str(path), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR)):
        raise OSError(f'{path}: OpenCV could not write the preview')
    return path
