"""One-call writers: render a world's sequences into one dataset layout or bag."""
from tqdm import tqdm

from mspr_ros.camera.model import CameraModel
from mspr_training.synth.dataset_writers import CambridgeWriter, SevenScenesWriter
from mspr_training.synth.rosbag_writer import RosbagWriter
from mspr_training.synth.sequences import plan_sequences, render_frame

DEFAULT_SIZE = (320, 240)


def write_frames(world, plans, camera, sinks, progress=False):
    """Render the frames of ``plans`` and pass each to the sinks of its split.

    ``sinks`` holds ``(sink, splits)`` pairs, or ``(sink, splits, sink_camera)`` triples for a
    sink recorded through another camera (same poses and light; None means ``camera``). A sink
    receives only frames whose split is in its ``splits``. Each frame is rendered once per
    camera that a sink of its split wants, and not at all when no sink wants it. Returns
    nothing; the caller closes the sinks.
    """
    entries = []
    for sink, splits, *rest in sinks:
        sink_camera = rest[0] if rest and rest[0] is not None else camera
        entries.append((sink, tuple(splits), sink_camera))
    total = sum(len(plan.poses) for plan in plans)
    with tqdm(total=total, unit='frame', disable=not progress) as bar:
        for plan in plans:
            wanted = [(sink, cam) for sink, splits, cam in entries if plan.split in splits]
            cameras = list(dict.fromkeys(cam for _, cam in wanted))
            scene = world.scene(plan.scene)
            for index in range(len(plan.poses)):
                frames = {cam: render_frame(scene, plan, index, cam) for cam in cameras}
                for sink, cam in wanted:
                    sink.add(frames[cam])
                bar.update()


def _defaults(world, plans, camera):
    """Return plans and camera, defaulting to ``plan_sequences`` and a 320 x 240 pinhole."""
    return (plans if plans is not None else plan_sequences(world),
            camera if camera is not None else CameraModel.from_fov(*DEFAULT_SIZE))


def write_cambridge(world, out_dir, plans=None, camera=None, progress=False):
    """Write the Cambridge Landmarks layout under ``out_dir``; return {scene: {split: n}}."""
    plans, camera = _defaults(world, plans, camera)
    writer = CambridgeWriter(out_dir)
    write_frames(world, plans, camera, [(writer, ('train', 'test'))], progress)
    return writer.close()


def write_7scenes(world, out_dir, plans=None, camera=None, depth=True, progress=False):
    """Write the 7-Scenes layout under ``out_dir``; return {scene: {split: n}}."""
    plans, camera = _defaults(world, plans, camera)
    writer = SevenScenesWriter(out_dir, depth=depth)
    write_frames(world, plans, camera, [(writer, ('train', 'test'))], progress)
    return writer.close()


def write_rosbag(world, bag_path, storage='mcap', rate_hz=30.0, plans=None, camera=None,
                 compressed=None, splits=('test',), progress=False):
    """Write the sequences of ``splits`` (all scenes, one after another) into one bag.

    ``camera`` (default a 320 x 240 pinhole) may be any ``CameraModel``: the frames are
    rendered through it and ``camera_info`` carries it. Returns the bag's metadata dict (also
    written to ``<bag>.json``).
    """
    plans, camera = _defaults(world, plans, camera)
    writer = RosbagWriter(bag_path, camera, storage=storage, rate_hz=rate_hz,
                          compressed=compressed, seed=world.seed)
    write_frames(world, plans, camera, [(writer, tuple(splits))], progress)
    return writer.close()
