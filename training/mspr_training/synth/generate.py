"""Render the synthetic world into dataset layouts and a bag, with a manifest and a cache."""
from dataclasses import asdict, dataclass
import json
from pathlib import Path
import shutil
import time

from mspr_ros.camera.model import CameraModel
from mspr_training.synth.dataset_writers import CambridgeWriter, SevenScenesWriter
from mspr_training.synth.preview import write_preview
from mspr_training.synth.rosbag_writer import RosbagWriter, sidecar_path
from mspr_training.synth.sequences import plan_sequences, SITE_SPLIT
from mspr_training.synth.world import build_world
from mspr_training.synth.writers import write_frames

#: Bump when the rendered output changes, so that older caches are not reused.
#: 4: the layouts state their camera (reconstruction.nvm, camera.json), the bag its camera_info.
GENERATOR_VERSION = 4
FORMATS = ('cambridge', '7scenes', 'bag')
OUTPUTS = {'cambridge': 'cambridge', '7scenes': '7scenes', 'bag': 'bag'}
MANIFEST = 'manifest.json'
PREVIEW = 'preview.png'
#: Present while a generation runs; a folder holding it was left half-written.
INCOMPLETE = '.mspr-synth-incomplete'


@dataclass
class Manifest:
    """What ``generate`` wrote.

    Attributes:
        parameters: every parameter that determines the output (the cache key).
        scenes: scene names in build order.
        counts: {scene: {split: frames}}.
        outputs: {format: path relative to the output folder}.
        seconds: wall time of the rendering run.
        cached: True when this call reused an earlier run.
    """

    parameters: dict
    scenes: list
    counts: dict
    outputs: dict
    seconds: float
    cached: bool = False

    def to_json(self):
        """Return the manifest as JSON text (``cached`` is not stored)."""
        data = asdict(self)
        data.pop('cached')
        return json.dumps(data, indent=2) + '\n'

    @classmethod
    def read(cls, path):
        """Return the manifest stored at ``path``, or None when absent or unreadable."""
        try:
            return cls(**json.loads(Path(path).read_text()))
        except (OSError, ValueError, TypeError):
            return None


def generate(out_dir, formats=FORMATS, num_scenes=3, train_frames=300, test_frames=100,
             size=(320, 240), seed=0, bag_storage='mcap', train_sequences=2, test_sequences=1,
             bag_splits=('test',), horizontal_fov_deg=65.0, preview=False, progress=False,
             bag_rate_hz=30.0, test_conditions='shifted',
             bag_camera: CameraModel | None = None, site_frames=0,
             site_sequences=1) -> Manifest:
    """Render the world once and write every requested format under ``out_dir``.

    Layout: ``out_dir/cambridge/<scene>/...``, ``out_dir/7scenes/<scene>/...``, ``out_dir/bag``
    (rosbag2 folder with the ``bag_splits`` sequences of every scene) and ``out_dir/bag.json``,
    plus ``manifest.json``. When ``manifest.json`` already records the same parameters and the
    outputs exist, nothing is rendered and the stored manifest is returned (``cached=True``).
    Re-generating with other parameters replaces only this tool's own outputs; a folder that
    holds them without a manifest is refused (FileExistsError) rather than overwritten.
    ``preview`` also writes ``preview.png``, a labelled contact sheet of every scene.
    ``bag_rate_hz`` sets the bag's frame stamps (a sequence is one loop of the room, so at 30 Hz
    the camera moves at several m/s; 5 Hz gives a walking pace). ``test_conditions``
    'shifted' (default) records the test sequences under other light, exposure and camera
    carriage than training (``mspr_training.synth.sequences``); 'same' draws them alike.
    ``bag_camera`` records the bag through another camera (e.g. ``synth.camera.wide_camera()``):
    its frames are rendered through it at the same poses and light, its ``camera_info`` and
    ``bag.json`` state it; the dataset layouts keep the ``size`` / ``horizontal_fov_deg``
    pinhole. None (default) records the bag through that pinhole too. ``site_frames`` > 0
    adds a ``site`` split to the dataset layouts: ``site_sequences`` walks per scene drawn as
    the test ones (``mspr_training.synth.sequences``), for ``mspr-export --calibration-split
    site``.
    """
    formats = tuple(formats)
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown or not formats:
        raise ValueError(f'formats must be a non-empty subset of {FORMATS}, got {formats}')
    out_dir = Path(out_dir)
    parameters = {
        'generator_version': GENERATOR_VERSION, 'formats': sorted(formats),
        'num_scenes': num_scenes, 'train_frames': train_frames, 'test_frames': test_frames,
        'size': list(size), 'seed': seed, 'bag_storage': bag_storage,
        'train_sequences': train_sequences, 'test_sequences': test_sequences,
        'bag_splits': sorted(bag_splits), 'horizontal_fov_deg': horizontal_fov_deg,
        'bag_rate_hz': bag_rate_hz, 'test_conditions': test_conditions,
        'bag_camera': None if bag_camera is None else bag_camera.to_dict(),
    }
    if site_frames:
        # Only then: worlds rendered before the site split existed stay reusable.
        parameters.update(site_frames=site_frames, site_sequences=site_sequences)
    dataset_splits = ('train', 'test', *((SITE_SPLIT,) if site_frames else ()))
    camera = CameraModel.from_fov(size[0], size[1], horizontal_fov_deg)
    bag_camera = camera if bag_camera is None else bag_camera

    def world_and_plans():
        world = build_world(seed, num_scenes)
        return world, plan_sequences(world, train_frames, test_frames, train_sequences,
                                     test_sequences, test_conditions, site_frames,
                                     site_sequences)

    previous = Manifest.read(out_dir / MANIFEST)
    reusable = previous is not None and previous.parameters == parameters
    if reusable and _complete(out_dir, previous):
        previous.cached = True
        if preview and not (out_dir / PREVIEW).exists():
            write_preview(out_dir / PREVIEW, *world_and_plans(), camera)
        return previous
    world, plans = world_and_plans()
    _clear_outputs(out_dir, (out_dir / MANIFEST).exists())
    (out_dir / INCOMPLETE).write_text('mspr-synth is writing this folder\n')
    started = time.perf_counter()
    sinks, outputs = [], {}
    if 'cambridge' in formats:
        sinks.append((CambridgeWriter(out_dir / OUTPUTS['cambridge']), dataset_splits))
        outputs['cambridge'] = OUTPUTS['cambridge']
    if '7scenes' in formats:
        sinks.append((SevenScenesWriter(out_dir / OUTPUTS['7scenes']), dataset_splits))
        outputs['7scenes'] = OUTPUTS['7scenes']
    if 'bag' in formats:
        sinks.append((RosbagWriter(out_dir / OUTPUTS['bag'], bag_camera, storage=bag_storage,
                                   rate_hz=bag_rate_hz, seed=seed), tuple(bag_splits),
                      bag_camera))
        outputs['bag'] = OUTPUTS['bag']
    write_frames(world, plans, camera, sinks, progress)
    for sink, *_ in sinks:
        sink.close()
    counts = {scene.name: {split: sum(len(p.poses) for p in plans
                                      if p.scene == scene.name and p.split == split)
                           for split in dataset_splits} for scene in world.scenes}
    manifest = Manifest(parameters, world.scene_names, counts, outputs,
                        round(time.perf_counter() - started, 3))
    (out_dir / MANIFEST).write_text(manifest.to_json())
    (out_dir / INCOMPLETE).unlink()
    if preview:
        write_preview(out_dir / PREVIEW, world, plans, camera)
    return manifest


def _complete(out_dir, manifest):
    """Return True when every output a manifest lists exists and no run was interrupted."""
    if (out_dir / INCOMPLETE).exists():
        return False
    return all((out_dir / path).exists() for path in manifest.outputs.values())


def _owned_paths(out_dir):
    """Return the paths ``generate`` writes inside ``out_dir``."""
    bag = out_dir / OUTPUTS['bag']
    return [out_dir / name for name in (OUTPUTS['cambridge'], OUTPUTS['7scenes'])] + [
        bag, sidecar_path(bag), out_dir / MANIFEST, out_dir / PREVIEW]


def _clear_outputs(out_dir, had_manifest):
    """Remove this tool's earlier outputs, refusing to overwrite folders it did not write."""
    existing = [path for path in _owned_paths(out_dir) if path.exists()]
    ours = had_manifest or (out_dir / INCOMPLETE).exists()
    if existing and not ours:
        raise FileExistsError(
            f'{existing[0]} exists but {out_dir} holds no {MANIFEST} from mspr-synth; '
            'choose an empty folder or remove it')
    for path in existing:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)
