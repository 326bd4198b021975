"""Build the posed-image datasets that a config's ``data`` section describes.

Formats (``data.format``): ``cambridge`` (one folder per scene with ``dataset_<split>.txt``),
``7scenes`` (one folder per scene with ``TrainSplit.txt``/``TestSplit.txt``), ``label_csv``
(MS-Transformer label files, ``data.label_files[split]``) and ``rosbag``
(``data.bags[split]``; a bag's scene is its parent folder's name unless ``data.scene_topic``
names a ``std_msgs/String`` scene topic). Scene indices are the sorted scene names (as
MS-Transformer's ``np.unique``) unless an explicit order is given (a bundle's).

With ``data.calibration_split: calibration`` that split is made of whole training sequences
held out of ``data.train_split`` (:func:`split_calibration`): reading the train split leaves
them out, reading 'calibration' returns only them. With 'crossfit' (the default) nothing is held
out: the train split is every training sequence, and :func:`read_crossfit_folds` divides it into
the folds of the cross-fitting runs (:func:`crossfit_folds`).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import replace
import hashlib
import logging
from pathlib import Path
import re
from typing import Sequence

import numpy as np

from mspr_ros.camera.model import CameraModel
from mspr_training.config import (CALIBRATION_SPLIT, CALIBRATION_TAIL_FRACTION, CROSSFIT_SPLIT,
                                  DataConfig)
from mspr_training.data import (DatasetError, MultiSceneDataset, PoseSample, read_7scenes,
                                read_cambridge, read_label_csv, read_rosbag)
from mspr_training.data.cambridge import split_file_name as cambridge_split_file
from mspr_training.data.seven_scenes import split_file_name as seven_scenes_split_file

LOGGER = logging.getLogger(__name__)

# The file that marks a folder as a scene of the split, per format.
_SCENE_MARKERS = {'cambridge': cambridge_split_file, '7scenes': seven_scenes_split_file}


def resolve_split(data: DataConfig, split: str) -> str:
    """Return the dataset split a command-line split name means ('val' -> data.val_split)."""
    return data.val_split if split == 'val' else split


def data_root(data: DataConfig, override: str | Path | None = None) -> Path:
    """Return the dataset root (``override`` wins over ``data.root``).

    Raises:
        DatasetError: no root given, or it is not a folder.
    """
    root = override if override is not None else data.root
    if root is None:
        raise DatasetError('no dataset root: set data.root in the config or pass --data-root')
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f'{root}: dataset root is not a folder')
    return root


def _scene_folders(data: DataConfig, root: Path, split: str) -> list[Path]:
    """Return the scene folders of a folder-per-scene dataset."""
    marker = _SCENE_MARKERS[data.format](split)
    if data.scenes is not None:
        folders = [root / name for name in data.scenes]
        for folder in folders:
            if not (folder / marker).is_file():
                raise DatasetError(f'{folder / marker}: scene {folder.name!r} named in '
                                   f'data.scenes has no {data.format} {split} split file')
        return folders
    folders = sorted(path.parent for path in root.glob(f'*/{marker}'))
    if not folders:
        raise DatasetError(f'{root}: no scene folder holds {marker} (format {data.format}, '
                           f'split {split})')
    return folders


def _group(samples: Sequence[PoseSample], scenes: Sequence[str] | None, source: str
           ) -> dict[str, list[PoseSample]]:
    """Group samples by scene, keeping only ``scenes`` (all when None)."""
    grouped: dict[str, list[PoseSample]] = {}
    for sample in samples:
        if scenes is None or sample.scene in scenes:
            grouped.setdefault(sample.scene, []).append(sample)
    if scenes is not None:
        missing = [name for name in scenes if name not in grouped]
        if missing:
            raise DatasetError(f'{source}: no samples of the scenes {missing} named in '
                               'data.scenes')
    if not grouped:
        raise DatasetError(f'{source}: no samples')
    return grouped


def _natural_key(name: str) -> list:
    """Sort key that orders ``seq2`` before ``seq10``."""
    return [int(part) if part.isdigit() else part for part in re.split(r'(\d+)', name)]


def split_calibration(samples: Sequence[PoseSample], sequences: int, scene: str = ''
                      ) -> tuple[list[PoseSample], list[PoseSample]]:
    """Divide one scene's training samples into (train, calibration) by whole sequences.

    The last ``sequences`` sequences (natural order) are held out. A scene with no more
    sequences than that cannot spare one: the contiguous last
    :data:`CALIBRATION_TAIL_FRACTION` of its frames (at least one, in file order) is held
    out instead, and a warning says so.
    """
    names = sorted({sample.sequence for sample in samples}, key=_natural_key)
    if len(names) > sequences:
        held = set(names[-sequences:])
        return ([s for s in samples if s.sequence not in held],
                [s for s in samples if s.sequence in held])
    if len(samples) < 2:
        raise DatasetError(f'scene {scene!r}: {len(samples)} training image(s) cannot be '
                           'divided into training and calibration images')
    count = min(len(samples) - 1, max(1, round(CALIBRATION_TAIL_FRACTION * len(samples))))
    LOGGER.warning('scene %s has %d training sequence(s), not more than the %d held out for '
                   'calibration: holding out its last %d of %d frames instead', scene,
                   len(names), sequences, count, len(samples))
    return list(samples[:-count]), list(samples[-count:])


def crossfit_folds(samples: Sequence[PoseSample], folds: int, scene: str = ''
                   ) -> list[list[PoseSample]]:
    """Return the ``folds`` held-out parts of one scene's training samples, in file order.

    Fold k is made of the sequences i (natural order, as :func:`split_calibration` sorts them)
    with ``i % folds == k``, so every sequence is held out exactly once and a fold never holds
    part of a sequence another fold trains on. A scene with fewer sequences than folds is cut
    into ``folds`` contiguous blocks of frames instead, with a warning: neighbouring frames of
    one walk then sit in a fold and in its training part, so its errors come out optimistic.
    """
    names = sorted({sample.sequence for sample in samples}, key=_natural_key)
    if len(names) >= folds:
        fold_of = {name: index % folds for index, name in enumerate(names)}
        return [[s for s in samples if fold_of[s.sequence] == fold] for fold in range(folds)]
    if len(samples) < folds:
        raise DatasetError(f'scene {scene!r}: {len(samples)} training image(s) cannot be '
                           f'divided into {folds} cross-fitting folds')
    LOGGER.warning('scene %s has %d training sequence(s), fewer than the %d cross-fitting '
                   'folds: cutting its %d frames into %d contiguous blocks instead (its '
                   'out-of-fold errors come from models that trained on the rest of the same '
                   'walk, so its calibration is optimistic)', scene, len(names), folds,
                   len(samples), folds)
    bounds = np.linspace(0, len(samples), folds + 1).round().astype(int)
    return [list(samples[start:stop]) for start, stop in zip(bounds[:-1], bounds[1:])]


def read_crossfit_folds(data: DataConfig, root: str | Path | None = None
                        ) -> list[tuple[dict[str, list[PoseSample]], dict[str, list[PoseSample]]]]:
    """Return ``(training part, held-out part)`` of every cross-fitting fold of the train split.

    Both parts are ``{scene name: samples}`` in file order; fold k's run trains on its training
    part and predicts its held-out part (:func:`crossfit_folds`, ``data.calibration_folds``).
    """
    count = data.calibration_folds
    parts: list[tuple[dict, dict]] = [({}, {}) for _ in range(count)]
    for scene, samples in _read_stored_split(data, data.train_split, root).items():
        for fold, held in enumerate(crossfit_folds(samples, count, scene)):
            held_ids = {id(sample) for sample in held}
            parts[fold][0][scene] = [s for s in samples if id(s) not in held_ids]
            parts[fold][1][scene] = held
    return parts


def read_split(data: DataConfig, split: str, root: str | Path | None = None
               ) -> dict[str, list[PoseSample]]:
    """Read one split of the dataset; returns ``{scene name: samples}``.

    Args:
        data: the config's data section.
        split: split name ('val' means ``data.val_split``).
        root: dataset root overriding ``data.root``.

    Raises:
        DatasetError: missing root, scenes or files, or malformed input (from the readers,
            naming the file and line).
    """
    split = resolve_split(data, split)
    if split == CROSSFIT_SPLIT:
        raise DatasetError(f'{CROSSFIT_SPLIT!r} is not a split of images: its calibration '
                           'errors are the out-of-fold predictions of the cross-fitting runs '
                           '(every training sequence, each predicted by the fold run that '
                           'left it out)')
    held_out = data.calibration_split == CALIBRATION_SPLIT
    if held_out and split in (CALIBRATION_SPLIT, data.train_split):
        divided = {scene: split_calibration(samples, data.calibration_sequences, scene)
                   for scene, samples in _read_stored_split(data, data.train_split,
                                                            root).items()}
        part = 1 if split == CALIBRATION_SPLIT else 0
        return {scene: parts[part] for scene, parts in divided.items()}
    return _read_stored_split(data, split, root)


def _read_stored_split(data: DataConfig, split: str, root: str | Path | None
                       ) -> dict[str, list[PoseSample]]:
    """Read a split as the dataset stores it (see :func:`read_split`), cameras applied."""
    samples = _read_files(data, split, root)
    if data.camera != 'reproject':
        return samples
    train = samples if split == data.train_split else _read_files(data, data.train_split, root)
    return apply_training_camera(samples, reference_camera(train))


def reference_camera(samples_by_scene: dict[str, list[PoseSample]]) -> CameraModel:
    """Return the pinhole of the most common camera of a (training) split.

    Raises:
        DatasetError: some image states no camera (``data.camera: reproject`` needs them all).
    """
    counts: Counter = Counter()
    for scene, samples in samples_by_scene.items():
        unknown = sum(sample.camera is None for sample in samples)
        if unknown:
            raise DatasetError(f'data.camera is reproject but {unknown} images of scene '
                               f'{scene!r} state no camera (mspr_training.data.cameras)')
        counts.update(sample.camera for sample in samples)
    camera, _ = counts.most_common(1)[0]
    return CameraModel.pinhole(camera.width, camera.height, camera.fx, camera.fy, camera.cx,
                               camera.cy)


def apply_training_camera(samples_by_scene: dict[str, list[PoseSample]], camera: CameraModel
                          ) -> dict[str, list[PoseSample]]:
    """Return the samples read through ``camera``: those of another camera are reprojected.

    Each such sample keeps its stored camera as ``source_camera`` (``load_rgb`` reprojects its
    pixels) and states ``camera``, so the training camera the bundle records is ``camera``.
    """
    reference_camera(samples_by_scene)  # every image must state its camera
    return {scene: [sample if sample.camera == camera
                    else replace(sample, camera=camera, source_camera=sample.camera)
                    for sample in samples]
            for scene, samples in samples_by_scene.items()}


def _read_files(data: DataConfig, split: str, root: str | Path | None
                ) -> dict[str, list[PoseSample]]:
    """Read a split exactly as the files store it."""
    root = data_root(data, root)
    if data.format == 'cambridge':
        return {folder.name: read_cambridge(folder, split)
                for folder in _scene_folders(data, root, split)}
    if data.format == '7scenes':
        return {folder.name: read_7scenes(folder, split)
                for folder in _scene_folders(data, root, split)}
    if data.format == 'label_csv':
        if split not in data.label_files:
            raise DatasetError(f'data.label_files has no entry for split {split!r} '
                               f'(has {sorted(data.label_files)})')
        csv_path = root / data.label_files[split]
        samples = read_label_csv(csv_path, root, rotation=data.rotation)
        return _group(samples, data.scenes, str(csv_path))
    if data.format == 'rosbag':
        if split not in data.bags or not data.bags[split]:
            raise DatasetError(f'data.bags has no bags for split {split!r} '
                               f'(has {sorted(data.bags)})')
        samples = []
        for bag in data.bags[split]:
            bag_path = root / bag
            samples.extend(read_rosbag(bag_path, data.image_topic, pose_topic=data.pose_topic,
                                       scene=bag_path.resolve().parent.name,
                                       scene_topic=data.scene_topic))
        return _group(samples, data.scenes, f'data.bags[{split}]')
    raise DatasetError(f'unknown data.format {data.format!r}')


def build_dataset(samples_by_scene: dict[str, list[PoseSample]],
                  scene_names: Sequence[str] | None = None) -> MultiSceneDataset:
    """Return the dataset of raw images (transforms are applied by the caller).

    Raises:
        DatasetError: a scene with samples that is not in ``scene_names``.
    """
    try:
        return MultiSceneDataset(samples_by_scene, transform=None, scene_names=scene_names)
    except ValueError as error:
        raise DatasetError(str(error)) from error


def sample_identity(sample: PoseSample, root: Path | None) -> str:
    """Return a stable name of a sample's image: its path relative to ``root``, or bag@stamp."""
    if sample.image_path is not None:
        path = Path(sample.image_path)
        if root is not None:
            try:
                return path.resolve().relative_to(Path(root).resolve()).as_posix()
            except ValueError:
                pass
        return path.as_posix()
    return f'{sample.scene}/{sample.sequence}@{sample.stamp_ns}'


def data_fingerprint(samples: Sequence[PoseSample], root: Path | None) -> str:
    """Return the sha256 over the sorted ``(image relative path, pose)`` of ``samples``.

    Poses are written with 6 decimals (micrometres, 1e-6 of a quaternion), so the fingerprint
    identifies the training set independently of its order or where the root is mounted.
    """
    rows = []
    for sample in samples:
        pose = np.concatenate([sample.position, sample.orientation])
        rows.append(sample_identity(sample, root) + ' '
                    + ' '.join(f'{value:.6f}' for value in pose))
    digest = hashlib.sha256()
    for row in sorted(rows):
        digest.update(row.encode())
        digest.update(b'\n')
    return digest.hexdigest()


def training_poses(samples_by_scene: dict[str, list[PoseSample]]
                   ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Return ``{scene: (positions N x 3, orientations N x 4)}`` for the naive baseline."""
    return {scene: (np.array([s.position for s in samples]).reshape(-1, 3),
                    np.array([s.orientation for s in samples]).reshape(-1, 4))
            for scene, samples in samples_by_scene.items()}
