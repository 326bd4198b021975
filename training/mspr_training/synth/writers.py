"""One-call writers: render a world's sequences into one dataset layout or bag."""
from tqdm import tqdm

from mspr_training.synth.camera import Intrinsics
from mspr_training.synth.dataset_writers import CambridgeWriter, SevenScenesWriter
from mspr_training.synth.rosbag_writer import RosbagWriter
from mspr_training.synth.sequences import plan_sequences, render_frames

DEFAULT_SIZE = (320, 240)


def write_frames(world, plans, intrinsics, sinks, progress=False):
    """Render every frame of ``plans`` once and pass it to each ``(sink, splits)`` pair.

    A sink receives only frames whose split is in its ``splits``. Returns nothing; the caller
    closes the sinks.
    """
    total = sum(len(plan.poses) for plan in plans)
    frames = render_frames(world, plans, intrinsics)
    for frame in tqdm(frames, total=total, unit='frame', disable=not progress):
        for sink, splits in sinks:
            if frame.plan.split in splits:
                sink.add(frame)


def _defaults(world, plans, intrinsics):
    """Return plans and intrinsics, defaulting to ``plan_sequences`` and 320 x 240."""
    return (plans if plans is not None else plan_sequences(world),
            intrinsics if intrinsics is not None else Intrinsics.from_fov(*DEFAULT_SIZE))


def write_cambridge(world, out_dir, plans=None, intrinsics=None, progress=False):
    """Write the Cambridge Landmarks layout under ``out_dir``; return {scene: {split: n}}."""
    plans, intrinsics = _defaults(world, plans, intrinsics)
    writer = CambridgeWriter(out_dir)
    write_frames(world, plans, intrinsics, [(writer, ('train', 'test'))], progress)
    return writer.close()


def write_7scenes(world, out_dir, plans=None, intrinsics=None, depth=True, progress=False):
    """Write the 7-Scenes layout under ``out_dir``; return {scene: {split: n}}."""
    plans, intrinsics = _defaults(world, plans, intrinsics)
    writer = SevenScenesWriter(out_dir, depth=depth)
    write_frames(world, plans, intrinsics, [(writer, ('train', 'test'))], progress)
    return writer.close()


def write_rosbag(world, bag_path, storage='mcap', rate_hz=30.0, plans=None, intrinsics=None,
                 compressed=None, splits=('test',), progress=False):
    """Write the sequences of ``splits`` (all scenes, one after another) into one bag.

    Returns the bag's metadata dict (also written to ``<bag>.json``).
    """
    plans, intrinsics = _defaults(world, plans, intrinsics)
    writer = RosbagWriter(bag_path, intrinsics, storage=storage, rate_hz=rate_hz,
                          compressed=compressed, seed=world.seed)
    write_frames(world, plans, intrinsics, [(writer, tuple(splits))], progress)
    return writer.close()
