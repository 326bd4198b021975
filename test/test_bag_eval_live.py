"""mspr-bag-eval --live: the real node fed by a bag replay over DDS with /clock, then scored."""
import json
from pathlib import Path

import numpy as np
import pytest

from mspr_ros.camera.model import CameraModel
from mspr_ros.estimation.pose_stream import PoseStream
from mspr_ros.localizer import Localizer
from mspr_training.bags.cli import main
from mspr_training.bags.live import assign_corrections, evaluate_live, LiveOptions
from mspr_training.bags.offline import default_params_file, evaluate_offline, GroundTruthSpec
from mspr_training.bags.offline import read_node_parameters
from mspr_training.bags.report import build_report, FrameStatus
from mspr_training.synth import build_world, plan_sequences, write_rosbag
from ros_harness import domain_id

pytestmark = pytest.mark.ros

# The tiny random model is unsure of every scene (about 1/3 each); let every frame through the
# node's gating so that what is measured is the replay, not the gate.
UNGATED = {'min_scene_confidence': '0.0'}


def _bag(path, rate_hz, frames_per_scene, compressed=None):
    world = build_world(seed=0, num_scenes=3)
    plans = plan_sequences(world, train_frames=1, test_frames=frames_per_scene,
                           train_sequences=1, test_sequences=1)
    write_rosbag(world, path, storage='mcap', rate_hz=rate_hz, plans=plans,
                 camera=CameraModel.from_fov(160, 120), compressed=compressed)
    return path


@pytest.fixture(scope='module')
def bag_5hz(tmp_path_factory) -> Path:
    """15 frames (three scenes, 5 each) at 5 Hz with /tf and /tf_static, mcap."""
    return _bag(tmp_path_factory.mktemp('live5') / 'bag', 5.0, 5)


def test_live_replay_at_5hz_answers_every_frame_like_offline(bag_5hz, tiny_bundle_path,
                                                             tmp_path, monkeypatch):
    out = tmp_path / 'live'
    # Ground truth of the base (TF map -> odom -> base_link): the node's ~/pose is scored.
    # The tiny bundle learned no error correlation: the 'time' model (0.2 s, one frame period:
    # rho 0.37) lets every frame through to ~/pose_update, so that it is scored too.
    overrides = {'min_scene_confidence': '0.0', 'fusion.error_correlation': 'time',
                 'fusion.error_correlation_s': '0.2'}
    status = main([str(bag_5hz), '--weights', str(tiny_bundle_path), '--live', '--device', 'cpu',
                   *[f'--param={name}:={value}' for name, value in overrides.items()],
                   '--out', str(out), '--quiet',
                   '--gt-frames', 'map', 'base_link', '--domain-id', str(domain_id(40))])
    assert status == 0, (out / 'node.log').read_text()[-3000:]
    report = json.loads((out / 'report.json').read_text())
    counts = report['counts']
    context = {key: report[key] for key in ('counts', 'latency', 'node_diagnostics')}
    # A 5 Hz camera gives the node 200 ms per frame, several times what the tiny model needs:
    # no frame may be lost.
    assert counts['published'] == counts['images'] == 15, context
    assert counts['answered'] == 15 and counts['dropped'] == 0, context
    answered = counts['answered']
    assert report['latency']['kind'] == 'end-to-end' and report['latency']['count'] == answered
    assert int(report['node_diagnostics']['frames received']) >= answered, context
    assert report['metrics'] is not None and report['scene_accuracy_available']
    # Same model, same frames, same parameters: the node's camera poses are the offline ones,
    # and its ~/pose_raw and fused ~/pose are those of the offline replay of its pose stream.
    parameters = read_node_parameters(default_params_file(), overrides=overrides)
    # The map -> odom the offline pose stream publishes, frame by frame.
    corrections = []
    step = PoseStream.step

    def recorded(self, *args, **kwargs):
        output = step(self, *args, **kwargs)
        if output.published:
            corrections.append(np.r_[output.T_map_odom.translation, output.T_map_odom.rotation])
        return output
    monkeypatch.setattr(PoseStream, 'step', recorded)
    offline = evaluate_offline(bag_5hz, Localizer.from_file(tiny_bundle_path, device='cpu'),
                               ground_truth=GroundTruthSpec(frames=('map', 'base_link')),
                               parameters=parameters)
    assert report['ground_truth']['compared_frame'] == 'base_link'
    live_frames = report['frames']
    assert [f['stamp_ns'] for f in live_frames] == [f.stamp_ns for f in offline.frames]
    # Every answered frame sends a correction, stamped image + tolerance; the recorder sees one
    # where map -> odom changes value. A frame the fusion gates out of a window of one leaves
    # the estimate, and so map -> odom, unchanged (this random model's second frame, 5 m from
    # the first, is: the 15 m window keeps the first): the live steps are the offline stream's
    # changes, frame for frame.
    assert len(corrections) == answered
    changes = 1 + sum(not np.allclose(before, after, rtol=0, atol=1e-9)
                      for before, after in zip(corrections, corrections[1:]))
    assert report['map_odom_frames'] == changes, context
    assert changes >= answered // 2, changes   # most frames do move it
    for live, reference in zip(live_frames, offline.frames):
        if live.get('camera_position') is None:
            continue
        for key in ('camera_position', 'camera_orientation'):
            np.testing.assert_allclose(live[key], getattr(reference, key), atol=1e-4, rtol=0,
                                       err_msg=key)
        assert live['scene'] == reference.scene
        np.testing.assert_allclose(live['gt_position'], reference.gt_position, atol=1e-12)
    block, replayed = report['per_frame_vs_fused'], offline.fusion
    assert block['source'] == 'node' and replayed['source'] == 'replay'
    assert block['compared_frame'] == 'base_link'
    assert block['per_frame']['frames'] == block['fused']['frames'] == answered
    assert block['error_correlation'] == replayed['error_correlation']
    assert block['error_correlation']['mode'] == 'time'
    assert block['config'] == json.loads(json.dumps(replayed['config']))
    for row in ('per_frame', 'fused'):
        for figure in ('position_m', 'orientation_deg'):
            assert block[row][figure] == pytest.approx(replayed[row][figure], abs=1e-3), row
        assert block[row]['coverage_2sigma'] == replayed[row]['coverage_2sigma'], row
    # ~/pose_update: every frame (rho 0.37 <= 0.5), the frame's own pose, covariance inflated.
    update = block['pose_update']
    assert update['available'] and update['messages'] == update['per_frame_messages'] == 15
    assert update['row']['position_m'] == pytest.approx(block['per_frame']['position_m'])
    markdown = (out / 'report.md').read_text()
    assert '`~/pose_raw` (each frame\'s own) and `~/pose` (fused)' in markdown
    assert '| pose update (EKF input) | 15 |' in markdown


def test_corrections_are_matched_to_frames_at_or_after_image_plus_tolerance():
    images = [0, 200, 400]
    # AMCL's rule exactly, then the node moving late corrections later to keep stamps rising.
    assert assign_corrections(images, [500, 700, 900], 500) == [True, True, True]
    assert assign_corrections(images, [500, 950, 960], 500) == [True, True, True]
    # One frame's correction never came: two corrections for three frames.
    assert sum(assign_corrections(images, [500, 900], 500)) == 2
    # A value change stamped before image + tolerance is not this frame's correction.
    assert assign_corrections(images, [400, 699], 500) == [True, False, False]
    assert assign_corrections(images, [], 500) == [False, False, False]


def test_live_replay_at_30hz_accounts_for_every_frame(tiny_bundle_path, tmp_path):
    # Compressed images this time: the node is started with image_transport compressed.
    bag = _bag(tmp_path / 'bag30', 30.0, 10, compressed='jpeg')
    options = LiveOptions(weights=tiny_bundle_path, params_file=default_params_file(),
                          parameters=UNGATED, device='cpu', domain_id=domain_id(41),
                          node_log=tmp_path / 'node.log')
    evaluation = evaluate_live(bag, options, image_topic='/camera/image_raw/compressed')
    assert evaluation.node_diagnostics['input topic'] == '/camera/image_raw/compressed'
    counts = build_report(evaluation).counts
    assert counts.images == counts.published == 30 and counts.bad_images == 0
    assert counts.answered + counts.dropped == counts.published
    assert counts.answered > 0
    answered = [f for f in evaluation.frames if f.status == FrameStatus.ANSWERED]
    assert all(f.latency_ms > 0 and f.camera_position is not None for f in answered)
    # Our count of lost frames matches the node's own bookkeeping: a frame is lost when DDS
    # never delivered it, a newer frame superseded it, or the node rejected it.
    diagnostics = evaluation.node_diagnostics
    received = int(diagnostics['frames received'])
    rejected = sum(int(v) for k, v in diagnostics.items() if k.startswith('rejected '))
    assert counts.dropped == (counts.published - received
                              + int(diagnostics['frames superseded']) + rejected), diagnostics
    assert int(diagnostics['poses published']) == counts.answered
    # Camera ground truth: the node's base poses, per-frame and fused, are moved to the camera.
    assert evaluation.fusion['compared_frame'] == 'camera'
    assert 0 < evaluation.fusion['fused']['frames'] <= counts.answered


def test_bad_weights_fail_before_starting_the_node(bag_5hz, tmp_path, capsys):
    weights = tmp_path / 'garbage.safetensors'
    weights.write_bytes(b'not a bundle')
    status = main([str(bag_5hz), '--weights', str(weights), '--live', '--device', 'cpu',
                   '--out', str(tmp_path / 'live'), '--quiet', '--domain-id', str(domain_id(42))])
    assert status == 1
    assert str(weights) in capsys.readouterr().err
    assert not (tmp_path / 'live' / 'node.log').exists(), 'no node may be started'
