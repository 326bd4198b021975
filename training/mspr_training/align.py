r"""``mspr-align``: place each trained scene on the robot's map (``map <- scene``).

A weights bundle knows its scenes in the frames their training poses were given in (a dataset's
reconstruction, a rendered world); Nav2's map comes from SLAM. The node maps every prediction
through the per-scene parameter ``scenes.<name>.map_from_scene: [x, y, z, qx, qy, qz, qw, scale]``
and publishes those alignments as ``map -> <scene>`` on ``/tf_static``, so RViz (fixed frame
``map``, TF display) shows each scene's frame over the map once the node runs with the new file.

Two sources of point pairs, fitted per scene with Umeyama's closed form (rotation and
translation; ``--scale`` also fits a uniform scale), made robust by least-median-of-squares
sampling and iterative trimming, residuals reported. ``--yaw-only`` keeps both frames'
z axes parallel (a gravity-aligned scene on a 2D Nav2 map): a ground robot's planar trajectory
pins roll and pitch only as well as its width allows.

- ``--bag``: a recording with the node's per-frame poses (``--pose-topic``, the node's
  ``~/pose_raw`` by default: each accepted frame's own base_link pose in map under the alignment
  the node used; not the fused ``~/pose``, a window average that lags the frame) and the robot's
  own map-frame poses of the same frame (``--reference-topic``: AMCL's ``amcl_pose``, a SLAM
  pose, a motion-capture ``PoseStamped``), time-matched by header stamp (the reference
  interpolated). The fit is the correction ``C: reference <- node`` and the new alignment is
  ``C * A0``, with ``A0`` the alignment the node ran with (``--params`` overrides, else the
  ``--weights`` bundle's, else identity). The scene of each pose is the ``header.frame_id`` of
  the ``--scene-topic`` message with exactly the pose's stamp (the node's
  ``~/scene_camera_pose``, published for every classified image with the image's stamp): the
  stamp ties a pose to its own image, whatever order the recorder received the topics in. A pose
  without such a message is left out and counted. ``--scene`` gives one scene to the whole bag
  instead. A ``std_msgs/String`` scene topic (the node's ``~/scene`` in older recordings) is
  refused: it has no stamp, and matching it by arrival time mis-assigns poses near scene changes.
- ``--correspondences``: at least three named points per scene measured in both frames, YAML
  (``{scene: {name: {scene: [x, y, z], map: [x, y, z]}}}``) or CSV (header
  ``scene,name,scene_x,scene_y,scene_z,map_x,map_y,map_z``).

The result is written into the parameter file given with ``--write`` (values replaced in place,
comments kept) and printed as a table; ``--report`` also writes it as JSON.

Examples::

    ros2 bag record /mspr_localizer/pose_raw /mspr_localizer/scene_camera_pose /amcl_pose \
        -o robot_run
    mspr-align --bag robot_run --weights model.safetensors --params config/mspr_ros.yaml \
        --write config/mspr_ros.yaml
    mspr-align --correspondences points.yaml --write my_params.yaml --scale
"""
import argparse
import csv
from dataclasses import dataclass
import json
import logging
from pathlib import Path
import re
import sys
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from scipy.spatial.transform import Rotation
import yaml

from mspr_ros.bundle import BundleError
from mspr_ros.geometry.transforms import alignment_parameter_name, alignment_parameter_scene
from mspr_ros.geometry.transforms import SceneAlignment
from mspr_ros.runtime.atomic_file import atomic_write
from mspr_training.data.rosbag import open_bag, read_bag_trajectory, read_header_frames
from mspr_training.data.rosbag import STRING_TYPE
from mspr_training.data.samples import DatasetError

LOGGER = logging.getLogger('mspr-align')
CSV_COLUMNS = ('scene', 'name', 'scene_x', 'scene_y', 'scene_z', 'map_x', 'map_y', 'map_z')
MIN_PAIRS = 3
# Below this many pairs a sampled consensus cannot tell outliers from the model.
MIN_PAIRS_FOR_OUTLIERS = 6
# The node's per-frame base pose in map (not the fused ~/pose, which lags the frame), and its
# scene-frame camera pose, whose frame_id names the scene of the image of that stamp.
DEFAULT_POSE_TOPIC = '/mspr_localizer/pose_raw'
DEFAULT_SCENE_TOPIC = '/mspr_localizer/scene_camera_pose'
# sigma = 1.4826 * median absolute residual for Gaussian noise (Rousseeuw's LMedS scale).
MAD_TO_SIGMA = 1.4826


class AlignmentError(ValueError):
    """The pairs cannot determine an alignment (too few, degenerate, or bad input)."""


@dataclass(frozen=True)
class Similarity:
    """``p_to = scale * R p_from + t``."""

    rotation: np.ndarray  # 3x3
    translation: np.ndarray  # (3,)
    scale: float = 1.0

    def apply(self, points: np.ndarray) -> np.ndarray:
        """Map (N, 3) points."""
        return self.scale * points @ self.rotation.T + self.translation

    def compose(self, first: 'Similarity') -> 'Similarity':
        """Return ``self * first`` (apply ``first``, then ``self``)."""
        return Similarity(self.rotation @ first.rotation,
                          self.scale * self.rotation @ first.translation + self.translation,
                          self.scale * first.scale)

    @classmethod
    def from_alignment(cls, alignment: SceneAlignment) -> 'Similarity':
        """Return the similarity of a node/bundle ``SceneAlignment``."""
        return cls(alignment.rotation_object.as_matrix(), np.array(alignment.translation),
                   alignment.scale)

    def as_param(self) -> List[float]:
        """Return the node's parameter value ``[x, y, z, qx, qy, qz, qw, scale]``."""
        quat = Rotation.from_matrix(self.rotation).as_quat()
        quat = -quat if quat[3] < 0 else quat
        return [float(v) for v in self.translation] + [float(v) for v in quat] + [
            float(self.scale)]


def umeyama(source: np.ndarray, target: np.ndarray, with_scale: bool = False,
            yaw_only: bool = False) -> Similarity:
    """Least-squares similarity ``target ~ s R source + t`` (Umeyama, PAMI 1991).

    The rotation comes from the SVD of the cross-covariance, with the sign of the last singular
    direction flipped when needed so that R is a rotation, never a reflection. Needs at least 3
    points that are not collinear.

    ``yaw_only``: R turns about z only (both frames gravity-aligned, e.g. a ground robot on a 2D
    Nav2 map). A planar trajectory pins roll and pitch only as well as its width allows, so a
    narrow corridor would otherwise tilt the fit with the position noise.
    """
    source = np.asarray(source, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    if source.shape != target.shape or source.ndim != 2 or source.shape[1] != 3:
        raise AlignmentError(f'expected two (N, 3) arrays, got {source.shape}, {target.shape}')
    if len(source) < MIN_PAIRS:
        raise AlignmentError(f'{len(source)} point pairs: at least {MIN_PAIRS} are needed')
    mean_s, mean_t = source.mean(axis=0), target.mean(axis=0)
    centred_s, centred_t = source - mean_s, target - mean_t
    spread = np.linalg.svd(centred_s, compute_uv=False)
    if not yaw_only and spread[1] <= 1e-9 * max(spread[0], 1e-12):
        raise AlignmentError('the points are (nearly) collinear: the rotation about their line '
                             'is undetermined')
    dims = 2 if yaw_only else 3
    covariance = centred_t[:, :dims].T @ centred_s[:, :dims] / len(source)
    u, singular, vt = np.linalg.svd(covariance)
    sign = np.eye(dims)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[-1, -1] = -1.0
    rotation = np.eye(3)
    rotation[:dims, :dims] = u @ sign @ vt
    scale = 1.0
    if with_scale:
        variance = (centred_s[:, :dims] ** 2).sum() / len(source)
        scale = float(np.trace(np.diag(singular) @ sign) / variance)
    return Similarity(rotation, mean_t - scale * rotation @ mean_s, scale)


@dataclass(frozen=True)
class RobustFit:
    """A fit with its inliers and residuals (metres, in the target frame)."""

    transform: Similarity
    inliers: np.ndarray  # bool (N,)
    residuals: np.ndarray  # (N,)
    threshold: float

    def summary(self) -> Dict[str, float]:
        """Residual statistics over the inliers (and the count of all pairs)."""
        inlier = self.residuals[self.inliers]
        return {'pairs': int(len(self.residuals)), 'inliers': int(self.inliers.sum()),
                'rmse_m': float(np.sqrt(np.mean(inlier ** 2))),
                'median_m': float(np.median(inlier)), 'max_m': float(inlier.max()),
                'threshold_m': float(self.threshold)}


def robust_umeyama(source: np.ndarray, target: np.ndarray, with_scale: bool = False,
                   inlier_threshold: Optional[float] = None, samples: int = 300,
                   seed: int = 0, iterations: int = 20, yaw_only: bool = False) -> RobustFit:
    """Umeyama made robust to outlier pairs.

    1. Least median of squares: fit minimal 3-pair samples, keep the one with the smallest
       median residual (tolerates up to half the pairs being outliers).
    2. Inlier threshold: ``inlier_threshold`` if given, else 2.5 robust sigmas of that median.
    3. Iterative trimming: refit on the inliers, recompute residuals and inliers, until the set
       stops changing.

    With fewer than ``MIN_PAIRS_FOR_OUTLIERS`` pairs every pair is used (no outlier rejection).
    """
    source = np.asarray(source, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    count = len(source)

    def fit(pick):
        return umeyama(source[pick], target[pick], with_scale, yaw_only)

    full = fit(slice(None))
    if count < MIN_PAIRS_FOR_OUTLIERS:
        residuals = np.linalg.norm(full.apply(source) - target, axis=1)
        return RobustFit(full, np.ones(count, bool), residuals, float('inf'))
    rng = np.random.default_rng(seed)
    best, best_median = full, np.median(np.linalg.norm(full.apply(source) - target, axis=1))
    for _ in range(samples):
        pick = rng.choice(count, MIN_PAIRS, replace=False)
        try:
            candidate = fit(pick)
        except AlignmentError:
            continue  # a collinear sample
        median = np.median(np.linalg.norm(candidate.apply(source) - target, axis=1))
        if median < best_median:
            best, best_median = candidate, median
    if inlier_threshold is None:
        sigma = MAD_TO_SIGMA * (1.0 + 5.0 / max(count - MIN_PAIRS, 1)) * best_median
        threshold = max(2.5 * sigma, 1e-9)
    else:
        threshold = float(inlier_threshold)
    inliers = np.linalg.norm(best.apply(source) - target, axis=1) <= threshold
    transform = best
    for _ in range(iterations):
        if inliers.sum() < MIN_PAIRS:
            raise AlignmentError(f'only {int(inliers.sum())} of {count} pairs lie within '
                                 f'{threshold:.3g} m of any fit: raise --inlier-threshold')
        transform = fit(inliers)
        residuals = np.linalg.norm(transform.apply(source) - target, axis=1)
        updated = residuals <= threshold
        if np.array_equal(updated, inliers):
            break
        inliers = updated
    residuals = np.linalg.norm(transform.apply(source) - target, axis=1)
    return RobustFit(transform, residuals <= threshold, residuals, threshold)


# --- inputs -------------------------------------------------------------------------------------

@dataclass
class ScenePairs:
    """Point pairs of one scene: ``source`` (scene or node-map frame) and ``target`` (map)."""

    source: np.ndarray
    target: np.ndarray
    # Orientation pairs (xyzw) when the source has them, to report rotation residuals.
    source_quats: Optional[np.ndarray] = None
    target_quats: Optional[np.ndarray] = None


def read_correspondences(path: Path) -> Dict[str, ScenePairs]:
    """Read named point pairs per scene from YAML or CSV (see the module docstring)."""
    path = Path(path)
    rows: List[Tuple[str, str, Sequence[float], Sequence[float]]] = []
    if path.suffix.lower() == '.csv':
        with open(path, newline='') as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in CSV_COLUMNS if c not in (reader.fieldnames or ())]
            if missing:
                raise AlignmentError(f'{path}: missing CSV columns {missing}')
            for row in reader:
                rows.append((row['scene'], row['name'],
                             [row[f'scene_{a}'] for a in 'xyz'], [row[f'map_{a}'] for a in 'xyz']))
    else:
        document = yaml.safe_load(path.read_text()) or {}
        if not isinstance(document, dict):
            raise AlignmentError(f'{path}: expected {{scene: {{name: {{scene: [x, y, z], '
                                 'map: [x, y, z]}}}}')
        for scene, points in document.items():
            for name, pair in (points or {}).items():
                if not isinstance(pair, dict) or set(pair) != {'scene', 'map'}:
                    raise AlignmentError(f'{path}: {scene}.{name} must have exactly the keys '
                                         "'scene' and 'map'")
                rows.append((str(scene), str(name), pair['scene'], pair['map']))
    grouped: Dict[str, Tuple[list, list]] = {}
    for scene, name, scene_xyz, map_xyz in rows:
        try:
            source = [float(v) for v in scene_xyz]
            target = [float(v) for v in map_xyz]
        except (TypeError, ValueError) as error:
            raise AlignmentError(f'{path}: {scene}.{name}: {error}') from None
        if len(source) != 3 or len(target) != 3 or not np.all(np.isfinite(source + target)):
            raise AlignmentError(f'{path}: {scene}.{name} needs 3 finite coordinates per frame')
        grouped.setdefault(scene, ([], []))
        grouped[scene][0].append(source)
        grouped[scene][1].append(target)
    if not grouped:
        raise AlignmentError(f'{path}: no correspondences')
    return {scene: ScenePairs(np.array(s), np.array(t)) for scene, (s, t) in grouped.items()}


@dataclass(frozen=True)
class BagPairs:
    """The pairs of a bag per scene, and how many of the node's poses were left out and why."""

    pairs: Dict[str, ScenePairs]
    pose_topic: str
    poses: int
    # Poses with no single scene for their stamp (no --scene-topic message of that stamp).
    without_scene: int
    # Poses with a scene but no reference pose within --max-gap.
    without_reference: int
    scene_topic: Optional[str] = None

    def summary(self) -> str:
        """Return one line: how many poses were used, and how many were left out for what."""
        used = sum(len(p.source) for p in self.pairs.values())
        text = f'{used} of {self.poses} poses on {self.pose_topic} paired'
        if self.scene_topic is not None:
            text += (f'; {self.without_scene} left out without a scene on {self.scene_topic} '
                     'of their stamp')
        return text + f'; {self.without_reference} left out without a reference pose'


def read_bag_pairs(bag_path: Path, pose_topic: str, reference_topic: str,
                   scene_topic: Optional[str], scene: Optional[str],
                   max_gap_s: float = 0.2) -> BagPairs:
    """Time-match the node's poses with reference poses in a bag; group them by scene.

    The scene of a pose is ``scene`` when given, else that of the ``scene_topic`` message of
    exactly its stamp (``scenes_by_stamp``).
    """
    estimates = read_bag_trajectory(bag_path, pose_topic=pose_topic)
    reference = read_bag_trajectory(bag_path, pose_topic=reference_topic)
    if estimates.frame_id != reference.frame_id:
        raise AlignmentError(f'{bag_path}: {pose_topic} is in {estimates.frame_id!r} but '
                             f'{reference_topic} in {reference.frame_id!r}; both must be the map')
    positions, quats, valid = reference.interpolate(estimates.stamps_ns, int(max_gap_s * 1e9))
    if scene is not None:
        names = np.array([scene] * len(estimates), dtype=object)
    elif scene_topic is not None:
        names = scenes_by_stamp(*read_stamped_scenes(bag_path, scene_topic),
                                estimates.stamps_ns)
    else:
        raise AlignmentError('give --scene-topic or --scene')
    has_scene = np.array([name is not None for name in names], dtype=bool)
    pairs = {}
    for name in sorted(set(names[has_scene])):
        keep = valid & (names == name)
        if keep.any():
            pairs[name] = ScenePairs(estimates.positions[keep], positions[keep],
                                     estimates.orientations[keep], quats[keep])
    if not pairs:
        raise AlignmentError(f'{bag_path}: no pose on {pose_topic} has a reference pose on '
                             f'{reference_topic} within {max_gap_s} s and a scene')
    return BagPairs(pairs, pose_topic, len(estimates), int((~has_scene).sum()),
                    int((has_scene & ~valid).sum()), None if scene is not None else scene_topic)


def read_stamped_scenes(bag_path: Path, topic: str) -> Tuple[np.ndarray, List[str]]:
    """Return (stamps, scene names) of a scene topic: the header stamps and frame ids.

    Raises:
        AlignmentError: the topic is a ``std_msgs/String`` (the node's unstamped ``~/scene``).
        DatasetError: the topic is absent or not a pose topic.
    """
    with open_bag(bag_path) as reader:
        types = {c.msgtype for c in reader.connections if c.topic == topic}
    if STRING_TYPE in types:
        raise AlignmentError(
            f'{bag_path}: the scene topic {topic} is a std_msgs/String, which has no stamp: a '
            'pose cannot be tied to the scene of its own image, and matching by arrival time '
            'mis-assigns poses near scene changes. Record the node\'s '
            f'{DEFAULT_SCENE_TOPIC} (geometry_msgs/PoseStamped, frame_id = the scene) with '
            f'{DEFAULT_POSE_TOPIC}, or give --scene NAME for a bag of one scene')
    return read_header_frames(bag_path, topic)


def scenes_by_stamp(scene_stamps_ns: np.ndarray, scene_names: Sequence[str],
                    stamps_ns: np.ndarray) -> np.ndarray:
    """Scene of each stamp: the name of the scene message of exactly that stamp, else None.

    The node stamps a pose and its scene message with their image's stamp, while the recorder
    logs each topic with its own delay, so only the stamp says which image a scene belongs to.
    A stamp whose messages name two scenes (e.g. a bag recorded over a looped replay) is None:
    nothing tells which is right.
    """
    by_stamp: Dict[int, set] = {}
    for stamp, name in zip(scene_stamps_ns, scene_names):
        # The node writes the bare scene name; a ROS 1 conversion may add a leading '/'.
        by_stamp.setdefault(int(stamp), set()).add(name.lstrip('/'))
    result = np.full(len(stamps_ns), None, dtype=object)
    for i, stamp in enumerate(stamps_ns):
        names = by_stamp.get(int(stamp), set())
        if len(names) == 1 and '' not in names:
            result[i] = next(iter(names))
    return result


# --- current alignments and the parameter file --------------------------------------------------

def parse_param_value(scene: str, value) -> SceneAlignment:
    """Parse ``[x, y, z, qx, qy, qz, qw, scale]`` as the node does (the core's parser)."""
    try:
        return SceneAlignment.from_parameter(value)
    except ValueError as error:
        raise AlignmentError(f'{alignment_parameter_name(scene)}: {error}') from None


def param_file_alignments(params_path: Optional[Path]) -> Dict[str, SceneAlignment]:
    """Return the ``scenes.<name>.map_from_scene`` values set in a parameter file."""
    if params_path is None or not Path(params_path).exists():
        return {}
    values = param_file_alignments_from_text(Path(params_path).read_text())
    return {scene: parse_param_value(scene, value) for scene, value in values.items()}


def current_alignments(weights: Optional[Path], params_path: Optional[Path]
                       ) -> Dict[str, SceneAlignment]:
    """Return the alignments the node ran with: the bundle's, replaced by the params file's."""
    alignments: Dict[str, SceneAlignment] = {}
    if weights is not None:
        from mspr_ros.bundle import load_bundle
        alignments.update(load_bundle(weights).scene_alignment)
    alignments.update(param_file_alignments(params_path))
    return alignments


def param_file_alignments_from_text(text: str) -> Dict[str, List[float]]:
    """Return the raw ``scenes.<name>.map_from_scene`` lists of parameter-file text."""
    document = yaml.safe_load(text) or {}
    found = {}
    for block in document.values():
        params = (block or {}).get('ros__parameters') if isinstance(block, dict) else None
        for name, value in (params or {}).items():
            scene = alignment_parameter_scene(name)
            if scene is not None:
                found[scene] = list(value or ())
    return found


def _format_value(values: Sequence[float]) -> str:
    return '[' + ', '.join(repr(float(v)) for v in values) + ']'


def write_alignments(params_path: Path, values: Mapping[str, Sequence[float]]) -> None:
    """Set ``scenes.<name>.map_from_scene`` in an rcl parameter file, keeping its comments.

    An existing uncommented line of a scene is replaced; otherwise the line is added at the end
    of the file's last ``ros__parameters`` block (the node's block must be the last one). The
    file is re-read afterwards and must hold exactly the new values.
    """
    params_path = Path(params_path)
    text = params_path.read_text() if params_path.exists() else (
        '/**/mspr_localizer:\n  ros__parameters:\n')
    lines = text.splitlines()
    block_lines = [i for i, line in enumerate(lines) if line.strip() == 'ros__parameters:']
    if not block_lines:
        raise AlignmentError(f'{params_path}: no ros__parameters block')
    indent = ' ' * (len(lines[block_lines[-1]]) - len(lines[block_lines[-1]].lstrip()) + 2)
    for scene, value in values.items():
        key = alignment_parameter_name(scene)
        pattern = re.compile(r'^(\s*)' + re.escape(key) + r'\s*:.*$')
        line = f'{key}: {_format_value(value)}'
        hits = [i for i, existing in enumerate(lines) if pattern.match(existing)]
        if hits:
            for i in hits:
                lines[i] = pattern.match(lines[i]).group(1) + line
        else:
            lines.append(indent + line)
    new_text = '\n'.join(lines) + '\n'
    written = param_file_alignments_from_text(new_text)
    for scene, value in values.items():
        if [float(v) for v in written.get(scene, ())] != [float(v) for v in value]:
            raise AlignmentError(f'{params_path}: could not place '
                                 f'{alignment_parameter_name(scene)} in the node block; add it '
                                 f'by hand: {_format_value(value)}')
    with atomic_write(params_path) as handle:
        handle.write(new_text.encode())


# --- fitting and reporting ----------------------------------------------------------------------

def rotation_residuals_deg(correction: Similarity, pairs: ScenePairs) -> Optional[np.ndarray]:
    """Angle between each reference orientation and the corrected estimate (degrees)."""
    if pairs.source_quats is None:
        return None
    corrected = Rotation.from_matrix(correction.rotation) * Rotation.from_quat(pairs.source_quats)
    return np.degrees((Rotation.from_quat(pairs.target_quats).inv() * corrected).magnitude())


def align_scenes(pairs: Mapping[str, ScenePairs], with_scale: bool = False,
                 inlier_threshold: Optional[float] = None,
                 base: Optional[Mapping[str, SceneAlignment]] = None,
                 yaw_only: bool = False) -> Dict[str, dict]:
    """Fit every scene; return ``{scene: {'value': [8 numbers], 'residuals': {...}}}``.

    ``base`` (bag mode): the alignment each scene's source positions were computed with; the
    result is the fitted correction composed with it. Without ``base`` the source positions are
    scene coordinates and the fit is the alignment itself.
    """
    results = {}
    for scene, scene_pairs in pairs.items():
        fit = robust_umeyama(scene_pairs.source, scene_pairs.target, with_scale,
                             inlier_threshold, yaw_only=yaw_only)
        alignment = fit.transform
        if base is not None:
            current = base.get(scene)
            if current is None:
                LOGGER.warning('scene %s: no current alignment known (give --weights or '
                               '--params); assuming identity', scene)
                current = SceneAlignment.identity()
            alignment = fit.transform.compose(Similarity.from_alignment(current))
        residuals = fit.summary()
        angles = rotation_residuals_deg(fit.transform, scene_pairs)
        if angles is not None:
            residuals['rotation_median_deg'] = float(np.median(angles[fit.inliers]))
        results[scene] = {'value': alignment.as_param(), 'residuals': residuals}
    return results


def format_table(results: Mapping[str, dict]) -> str:
    """Return a plain-text table of the fitted alignments and their residuals."""
    lines = ['scene        pairs  inliers  rmse [m]  median [m]  max [m]  '
             'map_from_scene [x, y, z, qx, qy, qz, qw, scale]']
    for scene, result in results.items():
        r = result['residuals']
        value = ', '.join(f'{v:.4f}' for v in result['value'])
        lines.append(f"{scene:<12} {r['pairs']:>5}  {r['inliers']:>7}  {r['rmse_m']:>8.4f}  "
                     f"{r['median_m']:>10.4f}  {r['max_m']:>7.4f}  [{value}]")
    return '\n'.join(lines)


def build_parser() -> argparse.ArgumentParser:
    """Return the command-line parser."""
    parser = argparse.ArgumentParser(
        prog='mspr-align', description=__doc__.split('\n\n')[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument('--bag', type=Path, help='rosbag2 recording with both pose streams')
    source.add_argument('--correspondences', type=Path,
                        help='YAML or CSV of named points measured in scene and map frames')
    parser.add_argument('--pose-topic', default=DEFAULT_POSE_TOPIC,
                        help="the node's poses in the bag (PoseWithCovarianceStamped, "
                             "PoseStamped or Odometry); default %(default)s, the node's "
                             'per-frame estimate (the fused ~/pose lags the frame)')
    parser.add_argument('--reference-topic', default='/amcl_pose',
                        help="the robot's own map-frame poses of the same frame")
    parser.add_argument('--scene-topic', default=DEFAULT_SCENE_TOPIC,
                        help="the node's ~/scene_camera_pose (PoseStamped, frame_id = the "
                             'scene; default %(default)s): each pose takes the scene of the '
                             'message of its exact stamp; poses without one are left out and '
                             'counted. Not the unstamped std_msgs/String ~/scene')
    parser.add_argument('--scene', help='treat every pose of the bag as this scene '
                        '(no scene topic needed)')
    parser.add_argument('--max-gap', type=float, default=0.2,
                        help='largest reference gap to interpolate across (s)')
    parser.add_argument('--weights', type=Path,
                        help="bundle the node ran with (its alignments are the starting point)")
    parser.add_argument('--params', type=Path,
                        help='parameter file the node ran with (its scene overrides win)')
    parser.add_argument('--scale', action='store_true',
                        help='also fit a uniform scale (e.g. an SfM reconstruction)')
    parser.add_argument('--yaw-only', action='store_true',
                        help='turn about z only: both frames gravity-aligned (a ground robot '
                             'on a 2D map); roll and pitch stay those of the current alignment')
    parser.add_argument('--inlier-threshold', type=float,
                        help='residual (m) above which a pair is an outlier; default: 2.5 '
                             'robust sigmas of the least-median-of-squares fit')
    parser.add_argument('--write', type=Path,
                        help='parameter file to set scenes.<name>.map_from_scene in')
    parser.add_argument('--report', type=Path, help='write the results as JSON')
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run ``mspr-align``; return the exit status."""
    logging.basicConfig(level=logging.INFO, format='%(name)s: %(message)s')
    args = build_parser().parse_args(argv)
    try:
        summary = None
        if args.bag is not None:
            bag = read_bag_pairs(args.bag, args.pose_topic, args.reference_topic,
                                 None if args.scene else args.scene_topic, args.scene,
                                 args.max_gap)
            pairs, summary = bag.pairs, bag.summary()
            base = current_alignments(args.weights, args.params)
        else:
            pairs, base = read_correspondences(args.correspondences), None
        results = align_scenes(pairs, args.scale, args.inlier_threshold, base, args.yaw_only)
        if args.write is not None:
            write_alignments(args.write, {s: r['value'] for s, r in results.items()})
    except (AlignmentError, BundleError, DatasetError, OSError, ValueError,
            yaml.YAMLError) as error:
        print(f'mspr-align: {error}', file=sys.stderr)
        return 2
    if summary is not None:
        print(summary)
    print(format_table(results))
    if args.write is not None:
        print(f'wrote {len(results)} scene alignment(s) to {args.write}; the node publishes them '
              'as map -> <scene> on /tf_static (RViz: fixed frame map, TF display)')
    if args.report is not None:
        args.report.write_text(json.dumps(results, indent=2) + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
