"""Recording plans: which sequences of which scenes, along which paths, under which light."""
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from mspr_training.synth.camera import Intrinsics
from mspr_training.synth.camera_paths import plan_path
from mspr_training.synth.render import Lighting, render

SPLITS = ('train', 'test')


@dataclass(frozen=True, eq=False)
class SequencePlan:
    """One recorded sequence.

    Attributes:
        scene: scene name.
        split: 'train' or 'test'.
        number: 1-based sequence number within the scene (train sequences first).
        poses: float64 (N, 4, 4) ``T_scene_cam`` of each frame.
        lighting: the sequence's illumination.
    """

    scene: str
    split: str
    number: int
    poses: np.ndarray
    lighting: Lighting


@dataclass(frozen=True, eq=False)
class RenderedFrame:
    """One rendered frame of a sequence.

    Attributes:
        plan: the sequence it belongs to.
        index: 0-based frame index in the sequence.
        pose: float64 (4, 4) ``T_scene_cam``.
        rgb: uint8 (H, W, 3).
        depth: float32 (H, W) metres along the optical axis.
    """

    plan: SequencePlan
    index: int
    pose: np.ndarray
    rgb: np.ndarray
    depth: np.ndarray


def split_counts(total, parts):
    """Return ``parts`` frame counts summing to ``total``, as equal as possible."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def plan_sequences(world, train_frames=300, test_frames=100, train_sequences=2,
                   test_sequences=1) -> list[SequencePlan]:
    """Return the plans of every scene: train sequences, then test sequences.

    ``train_frames`` and ``test_frames`` are per scene, shared out over the sequences. Each
    sequence walks its own loop (its own seed) under its own random lighting. Training
    sequences alternate between the two directions of travel, as a dataset's mapping runs cover
    the views a robot will see; a test sequence's direction is drawn at random (a regressor
    cannot place a view it never saw, e.g. every test frame facing the other way).
    """
    for name, frames, sequences in (('train', train_frames, train_sequences),
                                    ('test', test_frames, test_sequences)):
        if sequences < 1 or frames < sequences:
            raise ValueError(f'{name}: need at least one frame per sequence and one sequence, '
                             f'got {frames} frames in {sequences} sequences')
    plans = []
    for scene_index, scene in enumerate(world.scenes):
        counts = ([('train', n) for n in split_counts(train_frames, train_sequences)]
                  + [('test', n) for n in split_counts(test_frames, test_sequences)])
        for number, (split, frames) in enumerate(counts, start=1):
            rng = np.random.default_rng([world.seed, scene_index, number])
            clockwise = bool(number % 2 == 0) if split == 'train' else None
            poses = plan_path(scene, frames, rng, clockwise=clockwise)
            plans.append(SequencePlan(scene.name, split, number, poses, Lighting.random(rng)))
    return plans


def render_frames(world, plans, intrinsics: Intrinsics) -> Iterator[RenderedFrame]:
    """Yield every frame of ``plans`` in order, rendered."""
    for plan in plans:
        scene = world.scene(plan.scene)
        for index, pose in enumerate(plan.poses):
            result = render(scene, pose, intrinsics, plan.lighting)
            yield RenderedFrame(plan, index, pose, result.rgb, result.depth)
