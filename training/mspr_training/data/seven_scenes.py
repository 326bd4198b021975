"""Reader for the Microsoft 7-Scenes layout.

``<scene>/TrainSplit.txt`` and ``TestSplit.txt`` list one sequence per line (``sequence1`` ->
folder ``seq-01``). Each sequence folder holds ``frame-XXXXXX.color.png`` with
``frame-XXXXXX.pose.txt``: a whitespace separated 4 x 4 camera-to-world matrix, which is already
our ``T_scene_cam`` (camera optical frame -> scene frame). Every sample carries the scene's
camera (``mspr_training.data.cameras``: the Kinect camera the authors state, or the scene's
``camera.json``), scaled to the size of the sequence's images.
"""
from pathlib import Path
import re

import numpy as np
from scipy.spatial.transform import Rotation

from mspr_ros.geometry.quaternions import quaternion_from_rotation
from mspr_training.data.cameras import camera_for_image, seven_scenes_camera
from mspr_training.data.samples import (checked_split, DatasetError, parse_floats, PoseSample,
                                        where)

SEQUENCE_LINE = re.compile(r'^sequence(\d+)$')
POSE_SUFFIX = '.pose.txt'
COLOR_SUFFIX = '.color.png'
#: Tolerances of the pose matrix checks (files store ~7 significant digits).
LAST_ROW_TOLERANCE = 1e-6
ORTHONORMAL_TOLERANCE = 1e-3


def split_file_name(split: str) -> str:
    """Return the file that lists a split's sequences: ``TrainSplit.txt``, ``SiteSplit.txt``."""
    split = checked_split(split)
    return f'{split[0].upper()}{split[1:]}Split.txt'


def read_7scenes(scene_dir, split='train') -> list[PoseSample]:
    """Read every frame of the split's sequences, sorted by sequence then frame name.

    Raises:
        DatasetError: missing split file, a malformed split line or unknown sequence (naming the
            split file and line), a pose without image or image without pose, or a malformed pose
            matrix (naming the pose file and line).
    """
    scene_dir = Path(scene_dir)
    camera = seven_scenes_camera(scene_dir)
    samples = []
    for sequence_dir in _split_sequences(scene_dir, scene_dir / split_file_name(split)):
        samples.extend(_read_sequence(scene_dir.name, sequence_dir, camera))
    return samples


def _split_sequences(scene_dir, split_file):
    """Return the sequence folders listed in ``split_file``, validated."""
    if not split_file.is_file():
        raise DatasetError(f'{split_file}: split file does not exist')
    folders = []
    for number, text in enumerate(split_file.read_text().splitlines(), start=1):
        name = text.strip()
        if not name:
            continue
        match = SEQUENCE_LINE.match(name)
        if match is None:
            raise DatasetError(
                f'{where(split_file, number)}: expected a line like "sequence1", got {name!r}')
        folder = scene_dir / f'seq-{int(match.group(1)):02d}'
        if not folder.is_dir():
            raise DatasetError(
                f'{where(split_file, number)}: unknown sequence {name!r} (no folder {folder})')
        folders.append(folder)
    if not folders:
        raise DatasetError(f'{split_file}: lists no sequence')
    return folders


def _read_sequence(scene, sequence_dir, camera):
    """Return the samples of one ``seq-XX`` folder, taken with ``camera`` (at any size)."""
    poses = {p.name[:-len(POSE_SUFFIX)]: p for p in sequence_dir.glob('*' + POSE_SUFFIX)}
    images = {p.name[:-len(COLOR_SUFFIX)]: p for p in sequence_dir.glob('*' + COLOR_SUFFIX)}
    without_image = sorted(set(poses) - set(images))
    if without_image:
        stem = without_image[0]
        raise DatasetError(f'{poses[stem]}: no image {stem}{COLOR_SUFFIX} for this pose')
    without_pose = sorted(set(images) - set(poses))
    if without_pose:
        stem = without_pose[0]
        raise DatasetError(f'{images[stem]}: no pose file {stem}{POSE_SUFFIX} for this image')
    if not poses:
        raise DatasetError(f'{sequence_dir}: sequence folder holds no {POSE_SUFFIX} frames')
    # One camera per sequence: its images share one size, so one header is read.
    camera = camera_for_image(camera, images[min(images)])
    samples = []
    for stem in sorted(poses):
        matrix = read_pose_matrix(poses[stem])
        samples.append(PoseSample(
            scene=scene,
            sequence=sequence_dir.name,
            position=matrix[:3, 3].copy(),
            orientation=quaternion_from_rotation(Rotation.from_matrix(matrix[:3, :3])),
            image_path=images[stem], camera=camera))
    return samples


def read_pose_matrix(path) -> np.ndarray:
    """Read and validate a 4 x 4 rigid transform written as 4 rows of 4 numbers.

    Raises:
        DatasetError: wrong shape (naming the line), non-numeric value, last row not 0 0 0 1, or
            a rotation block that is not orthonormal with determinant +1.
    """
    rows = [line.split() for line in Path(path).read_text().splitlines()]
    numbered = [(number, row) for number, row in enumerate(rows, start=1) if row]
    if len(numbered) != 4:
        raise DatasetError(f'{path}: expected 4 rows of a 4x4 matrix, got {len(numbered)}')
    matrix = np.empty((4, 4))
    for index, (number, row) in enumerate(numbered):
        if len(row) != 4:
            raise DatasetError(f'{where(path, number)}: expected 4 numbers, got {len(row)}')
        matrix[index] = parse_floats(row, path, number)
    last_number = numbered[-1][0]
    if np.abs(matrix[3] - (0.0, 0.0, 0.0, 1.0)).max() > LAST_ROW_TOLERANCE:
        raise DatasetError(
            f'{where(path, last_number)}: last row must be 0 0 0 1, got {matrix[3].tolist()}')
    rotation = matrix[:3, :3]
    error = np.abs(rotation.T @ rotation - np.eye(3)).max()
    if error > ORTHONORMAL_TOLERANCE or np.linalg.det(rotation) <= 0:
        raise DatasetError(
            f'{path}: rotation block is not a rotation (|R^T R - I| = {error:.3g}, '
            f'det = {np.linalg.det(rotation):.3g})')
    return matrix
