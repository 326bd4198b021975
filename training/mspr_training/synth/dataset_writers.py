"""Writers of rendered sequences in the Cambridge Landmarks and 7-Scenes layouts.

Each writer takes ``RenderedFrame`` objects one at a time (``add``) and writes the listing files
on ``close``; both layouts are exactly what ``mspr_training.data`` reads back. Both record the
camera the frames were rendered through (``RenderedFrame.camera``): Cambridge as the focal
length of each image in ``reconstruction.nvm``, as the real dataset ships it; 7-Scenes, which
ships no intrinsics, in our ``camera.json`` extension (``mspr_training.data.cameras``).
"""
from collections import defaultdict
import json
from pathlib import Path

import cv2
import numpy as np
from scipy.spatial.transform import Rotation

from mspr_ros.geometry.quaternions import quaternion_from_rotation
from mspr_training.data import cambridge, seven_scenes
from mspr_training.data.cameras import CAMERA_FILE, NVM_FILE
from mspr_training.synth.sequences import SPLITS

CAMBRIDGE_HEADER = 'Visual Landmark Dataset V1\nImageFile, Camera Position [X Y Z W P Q R]\n\n'
#: 7-Scenes depth PNGs hold uint16 millimetres; 65535 marks an invalid reading.
DEPTH_INVALID = 65535


def frame_camera(frame):
    """Return the camera a frame was rendered through; ValueError when it does not say."""
    if frame.camera is None:
        raise ValueError(f'{frame.plan.scene} seq{frame.plan.number} frame {frame.index}: the '
                         'frame does not record its camera, which the dataset must state')
    return frame.camera


def nvm_camera_line(relative, camera, quaternion_wxyz, centre):
    """Return one NVM_V3 camera line: image, focal, w x y z, centre, radial distortion 0, 0.

    VisualSFM models a camera by one focal length with square pixels, the principal point at
    the image centre and one radial coefficient: ValueError for a camera it cannot state.
    """
    if not camera.is_pinhole or camera.fx != camera.fy or \
            (camera.cx, camera.cy) != ((camera.width - 1) / 2.0, (camera.height - 1) / 2.0):
        raise ValueError(f'an NVM file states only square-pixel pinholes centred in the image, '
                         f'got {camera.to_dict()}')
    values = ' '.join(f'{v:.9f}' for v in (*quaternion_wxyz, *centre))
    return f'{relative} {camera.fx!r} {values} 0 0'


def write_png(path, rgb):
    """Write an RGB uint8 image losslessly, creating folders; OSError if OpenCV fails."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f'{path}: OpenCV could not write the image')


class CambridgeWriter:
    """Writes ``<root>/<scene>/seqN/frameXXXXX.png`` and ``dataset_<split>.txt``.

    Poses are written in Cambridge's convention: camera centre ``X Y Z`` and the w-first
    quaternion ``W P Q R`` of the world-to-camera rotation ``R_scene_cam^T`` (canonical sign).

    ``<scene>/reconstruction.nvm`` lists every image of the scene as VisualSFM's NVM_V3 does
    (the file Cambridge Landmarks ships): ``NVM_V3``, a blank line, the camera count, one line
    per image ``<image> <focal px> <W P Q R> <X Y Z> <radial distortion 0> 0`` (the same pose
    as the listing, image path relative to the scene folder), then a blank line and ``0`` (no
    3-D points) ending the model, and a last ``0`` (no further model).
    """

    def __init__(self, root):
        """Write under ``root`` (created when needed)."""
        self.root = Path(root)
        self.rows = defaultdict(list)
        self.nvm = defaultdict(list)

    def add(self, frame):
        """Write one frame's image and remember its listing row."""
        relative = f'seq{frame.plan.number}/frame{frame.index + 1:05d}.png'
        write_png(self.root / frame.plan.scene / relative, frame.rgb)
        centre = frame.pose[:3, 3]
        x, y, z, w = quaternion_from_rotation(Rotation.from_matrix(frame.pose[:3, :3].T))
        values = ' '.join(f'{v:.9f}' for v in (*centre, w, x, y, z))
        self.rows[(frame.plan.scene, frame.plan.split)].append(f'{relative} {values}')
        self.nvm[frame.plan.scene].append(
            nvm_camera_line(relative, frame_camera(frame), (w, x, y, z), centre))

    def close(self):
        """Write the split and NVM files of every scene seen; return {scene: {split: frames}}."""
        counts = defaultdict(dict)
        for (scene, split), rows in sorted(self.rows.items()):
            listing = self.root / scene / cambridge.split_file_name(split)
            listing.write_text(CAMBRIDGE_HEADER + '\n'.join(rows) + '\n')
            counts[scene][split] = len(rows)
        for scene, lines in sorted(self.nvm.items()):
            (self.root / scene / NVM_FILE).write_text(
                f'NVM_V3\n\n{len(lines)}\n' + '\n'.join(lines) + '\n\n0\n\n0\n')
        return dict(counts)


class SevenScenesWriter:
    """Writes the 7-Scenes layout.

    Files: ``<root>/<scene>/seq-XX/frame-XXXXXX.{color.png,depth.png,pose.txt}`` and the
    ``TrainSplit.txt`` / ``TestSplit.txt`` files.

    ``pose.txt`` is the 4 x 4 camera-to-world matrix (our ``T_scene_cam``) with 12 significant
    digits; ``depth.png`` is uint16 millimetres along the optical axis, as in 7-Scenes.
    ``<scene>/camera.json`` is the frames' ``CameraModel.to_dict()``: real 7-Scenes ships no
    intrinsics (readers assume the Kinect's 585 px at 640 x 480), ours states its camera, one
    per scene.
    """

    def __init__(self, root, depth=True):
        """Write under ``root``; ``depth`` also writes the depth images."""
        self.root = Path(root)
        self.depth = depth
        self.sequences = defaultdict(set)
        self.frames = defaultdict(int)
        self.cameras = {}

    def add(self, frame):
        """Write one frame's files."""
        plan = frame.plan
        camera = self.cameras.setdefault(plan.scene, frame_camera(frame))
        if camera != frame.camera:
            raise ValueError(f'{plan.scene}: a 7-Scenes scene states one camera, got '
                             f'{camera.to_dict()} and {frame.camera.to_dict()}')
        stem = self.root / plan.scene / f'seq-{plan.number:02d}' / f'frame-{frame.index:06d}'
        write_png(stem.with_name(stem.name + '.color.png'), frame.rgb)
        rows = ['\t'.join(f'{v:.12e}' for v in row) for row in frame.pose]
        stem.with_name(stem.name + '.pose.txt').write_text('\n'.join(rows) + '\n')
        if self.depth:
            millimetres = np.round(frame.depth * 1000.0)
            depth = np.where((millimetres > 0) & (millimetres < DEPTH_INVALID), millimetres,
                             DEPTH_INVALID).astype(np.uint16)
            path = stem.with_name(stem.name + '.depth.png')
            if not cv2.imwrite(str(path), depth):
                raise OSError(f'{path}: OpenCV could not write the depth image')
        self.sequences[(plan.scene, plan.split)].add(plan.number)
        self.frames[(plan.scene, plan.split)] += 1

    def close(self):
        """Write the split files and ``camera.json`` of every scene; return {scene: {split: n}}."""
        counts = defaultdict(dict)
        for scene in sorted({scene for scene, _ in self.sequences}):
            (self.root / scene / CAMERA_FILE).write_text(
                json.dumps(self.cameras[scene].to_dict(), indent=2) + '\n')
            # Train and test files always, as the dataset ships them; other splits when seen.
            seen = {split for name, split in self.sequences if name == scene}
            for split in [*SPLITS, *sorted(seen - set(SPLITS))]:
                numbers = sorted(self.sequences.get((scene, split), ()))
                (self.root / scene / seven_scenes.split_file_name(split)).write_text(
                    ''.join(f'sequence{number}\n' for number in numbers))
                counts[scene][split] = self.frames.get((scene, split), 0)
        return dict(counts)
