"""Recording plans: which sequences of which scenes, along which paths, under which light.

Test sequences are recorded under other conditions than training ones by default
(``test_conditions='shifted'``), as in the real datasets, where test sequences are other days and
other walks: light from :meth:`Lighting.shifted` (other exposure, colour cast and sun) and a
camera carried differently (height 12-25 cm higher or lower, another pitch bias, a wider
look-around). ``'same'`` draws test sequences like training ones.

A world can also hold a ``site`` split: walks of their own, drawn like the test walks (the same
conditions, each its own path and light), for calibrating a trained model's covariance under the
conditions it will meet (``mspr-export --calibration-split site``) without touching the walks it
is judged on.
"""
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from mspr_ros.camera.model import CameraModel
from mspr_training.synth.camera_paths import PathStyle, plan_path
from mspr_training.synth.render import Lighting, render

SPLITS = ('train', 'test')
SITE_SPLIT = 'site'
TEST_CONDITIONS = ('shifted', 'same')


def shifted_style(rng) -> PathStyle:
    """Return a seeded way of carrying the camera that training sequences never use."""
    height = PathStyle.height + float(rng.choice([-1.0, 1.0]) * rng.uniform(0.12, 0.25))
    return PathStyle(height=height, pitch_bias_deg=float(rng.uniform(-3.0, 7.0)),
                     look_around_deg=28.0)


@dataclass(frozen=True, eq=False)
class SequencePlan:
    """One recorded sequence.

    Attributes:
        scene: scene name.
        split: 'train', 'test' or 'site'.
        number: 1-based sequence number within the scene (train, then test, then site).
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
        camera: the camera it was rendered through (None when unknown).
    """

    plan: SequencePlan
    index: int
    pose: np.ndarray
    rgb: np.ndarray
    depth: np.ndarray
    camera: CameraModel | None = None


def split_counts(total, parts):
    """Return ``parts`` frame counts summing to ``total``, as equal as possible."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def plan_sequences(world, train_frames=300, test_frames=100, train_sequences=2,
                   test_sequences=1, test_conditions='shifted', site_frames=0,
                   site_sequences=1) -> list[SequencePlan]:
    """Return the plans of every scene: train sequences, then test ones, then site ones.

    ``train_frames`` and ``test_frames`` are per scene, shared out over the sequences. Each
    sequence walks its own loop (its own seed) under its own random lighting. Training
    sequences alternate between the two directions of travel, as a dataset's mapping runs cover
    the views a robot will see; a test sequence's direction is drawn at random (a regressor
    cannot place a view it never saw, e.g. every test frame facing the other way).
    ``test_conditions`` ('shifted' or 'same', see the module docstring) sets how test
    sequences differ from training ones; training sequences do not depend on it.
    ``site_frames`` > 0 adds ``site_sequences`` walks per scene, drawn as test ones are; the
    train and test walks do not depend on them.
    """
    if test_conditions not in TEST_CONDITIONS:
        raise ValueError(f'test_conditions must be one of {TEST_CONDITIONS}, '
                         f'got {test_conditions!r}')
    wanted = [('train', train_frames, train_sequences), ('test', test_frames, test_sequences)]
    if site_frames:
        wanted.append((SITE_SPLIT, site_frames, site_sequences))
    for name, frames, sequences in wanted:
        if sequences < 1 or frames < sequences:
            raise ValueError(f'{name}: need at least one frame per sequence and one sequence, '
                             f'got {frames} frames in {sequences} sequences')
    plans = []
    for scene_index, scene in enumerate(world.scenes):
        counts = [(split, n) for split, frames, sequences in wanted
                  for n in split_counts(frames, sequences)]
        for number, (split, frames) in enumerate(counts, start=1):
            rng = np.random.default_rng([world.seed, scene_index, number])
            clockwise = bool(number % 2 == 0) if split == 'train' else None
            if split != 'train' and test_conditions == 'shifted':
                style, lighting = shifted_style(rng), Lighting.shifted
            else:
                style, lighting = PathStyle(), Lighting.random
            poses = plan_path(scene, frames, rng, style=style, clockwise=clockwise)
            plans.append(SequencePlan(scene.name, split, number, poses, lighting(rng)))
    return plans


def render_frame(scene, plan: SequencePlan, index: int, camera: CameraModel) -> RenderedFrame:
    """Return frame ``index`` of ``plan`` (in ``scene``) rendered through ``camera``."""
    pose = plan.poses[index]
    result = render(scene, pose, camera, plan.lighting)
    return RenderedFrame(plan, index, pose, result.rgb, result.depth, camera)


def render_frames(world, plans, camera: CameraModel) -> Iterator[RenderedFrame]:
    """Yield every frame of ``plans`` in order, rendered through ``camera``."""
    for plan in plans:
        scene = world.scene(plan.scene)
        for index in range(len(plan.poses)):
            yield render_frame(scene, plan, index, camera)
