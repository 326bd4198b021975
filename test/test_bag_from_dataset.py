"""mspr-bag-from-dataset: rendered Cambridge / 7-Scenes sequences -> rosbag2 -> read back."""
from pathlib import Path

import numpy as np
import pytest

from mspr_training.bags.from_dataset import COMPRESSED_TOPIC, convert_dataset, GT_TOPIC
from mspr_training.bags.from_dataset import IMAGE_TOPIC, main, NS_PER_S, SCENE_TOPIC
from mspr_training.data import load_rgb, read_7scenes, read_cambridge, read_rosbag
from mspr_training.data.rosbag import open_bag
from mspr_training.synth import generate

SCENE = 'atrium'


@pytest.fixture(scope='module')
def dataset(tmp_path_factory) -> Path:
    """One rendered scene in both layouts; test split = sequences 2 and 3 (4 frames each)."""
    out = tmp_path_factory.mktemp('dataset')
    generate(out, formats=('cambridge', '7scenes'), num_scenes=1, train_frames=1,
             test_frames=8, size=(64, 48), train_sequences=1, test_sequences=2)
    return out


def _assert_same_samples(bag_samples, dataset_samples, start_ns, rate_hz):
    assert len(bag_samples) == len(dataset_samples) > 0
    period = round(NS_PER_S / rate_hz)
    for index, (got, want) in enumerate(zip(bag_samples, dataset_samples)):
        assert got.scene == want.scene == SCENE
        assert got.stamp_ns == start_ns + index * period
        assert got.frame == 'camera_optical'
        np.testing.assert_allclose(got.position, want.position, atol=1e-6, rtol=0)
        # Both readers canonicalise to w >= 0, so equal rotations have equal quaternions.
        np.testing.assert_allclose(got.orientation, want.orientation, atol=1e-6, rtol=0)
        np.testing.assert_array_equal(got.image, load_rgb(want))


def test_cambridge_sequence_round_trip_raw_mcap(dataset, tmp_path):
    scene_dir = dataset / 'cambridge' / SCENE
    bag = tmp_path / 'kings_seq3'
    summary = convert_dataset('cambridge', scene_dir, bag, split='test', sequence='seq3',
                              rate_hz=10.0, storage='mcap', start_ns=5 * NS_PER_S)
    want = sorted((s for s in read_cambridge(scene_dir, 'test') if s.sequence == 'seq3'),
                  key=lambda s: s.image_path.name)
    assert summary.frames == len(want) == 4 and summary.sequences == ('seq3',)
    assert list(bag.glob('*.mcap')), 'mcap storage requested'
    got = read_rosbag(bag, IMAGE_TOPIC, pose_topic=GT_TOPIC, scene_topic=SCENE_TOPIC)
    _assert_same_samples(got, want, 5 * NS_PER_S, 10.0)


def test_7scenes_split_round_trip_compressed_sqlite_via_cli(dataset, tmp_path):
    scene_dir = dataset / '7scenes' / SCENE
    bag = tmp_path / 'atrium_test'
    status = main(['--format', '7scenes', '--scene-dir', str(scene_dir), '--split', 'test',
                   '--out', str(bag), '--rate', '4', '--storage', 'sqlite3', '--compressed',
                   '--start-time', '100'])
    assert status == 0
    assert list(bag.glob('*.db3')), 'sqlite3 storage requested'
    want = read_7scenes(scene_dir, 'test')  # both test sequences, in sequence/frame order
    assert [s.sequence for s in want] == ['seq-02'] * 4 + ['seq-03'] * 4
    with open_bag(bag) as reader:
        topics = {c.topic: c.msgtype for c in reader.connections}
    assert topics == {COMPRESSED_TOPIC: 'sensor_msgs/msg/CompressedImage',
                      GT_TOPIC: 'geometry_msgs/msg/PoseStamped',
                      SCENE_TOPIC: 'std_msgs/msg/String'}
    got = read_rosbag(bag, COMPRESSED_TOPIC, pose_topic=GT_TOPIC, scene_topic=SCENE_TOPIC)
    _assert_same_samples(got, want, 100 * NS_PER_S, 4.0)
    # The dataset's PNG files travel unchanged (no recompression) and are declared as PNG.
    with open_bag(bag) as reader:
        connections = [c for c in reader.connections if c.topic == COMPRESSED_TOPIC]
        messages = [reader.deserialize(raw, c.msgtype)
                    for c, _, raw in reader.messages(connections=connections)]
    assert [m.format for m in messages] == ['png'] * len(want)
    assert [bytes(m.data) for m in messages] == [s.image_path.read_bytes() for s in want]


def test_seven_scenes_sequence_selected_by_number(dataset, tmp_path):
    scene_dir = dataset / '7scenes' / SCENE
    summary = convert_dataset('7scenes', scene_dir, tmp_path / 'bag', sequence='seq2')
    assert summary.sequences == ('seq-02',) and summary.frames == 4


def test_unknown_sequence_is_a_clear_error(dataset, tmp_path, capsys):
    scene_dir = dataset / 'cambridge' / SCENE
    status = main(['--format', 'cambridge', '--scene-dir', str(scene_dir), '--sequence', 'seq9',
                   '--out', str(tmp_path / 'bag')])
    assert status == 1
    error = capsys.readouterr().err
    assert str(scene_dir) in error and "'seq9'" in error and 'seq2, seq3' in error
    assert not (tmp_path / 'bag').exists()


def test_existing_output_is_never_overwritten(dataset, tmp_path, capsys):
    out = tmp_path / 'bag'
    out.mkdir()
    status = main(['--format', 'cambridge', '--scene-dir', str(dataset / 'cambridge' / SCENE),
                   '--out', str(out)])
    assert status == 1 and 'already exists' in capsys.readouterr().err
