"""Export (bundle, calibrated covariance, provenance) and evaluation of a trained tiny model."""
import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.transform import Rotation
import torch

from mspr_ros.bundle import load_bundle
from mspr_ros.localizer import Localizer
from mspr_training import evaluate, export
from mspr_training.calibration import calibrate_covariance
from mspr_training.checkpoint import latest_checkpoint, load_checkpoint
from mspr_training.config import load_config
from mspr_training.data import load_rgb
from mspr_training.datasets import build_dataset, data_fingerprint, read_split
from mspr_training.engine import Predictions
from mspr_training.export import export_bundle, model_from_checkpoint
from mspr_training.metrics import pose_error_vectors
from mspr_training.train import train
from mspr_training.transforms import eval_transform

IDENTITY = [0.0, 0.0, 0.0, 1.0]


@pytest.fixture(scope='module')
def run(tiny_world, tmp_path_factory, isolated_torch) -> Path:
    """Train tiny_test.yaml for one epoch (the global torch state is restored after the module)."""
    out = tmp_path_factory.mktemp('run')
    train(load_config('tiny_test', ['schedule.epochs=1']), out, tiny_world)
    return out


@pytest.fixture(scope='module')
def bundle_path(run, tmp_path_factory) -> Path:
    """Export the run with calibration on the default split: the held-out training sequences."""
    path, report = export_bundle(run, tmp_path_factory.mktemp('bundle') / 'tiny.safetensors',
                                 device='cpu')
    assert report is not None and len(report.scenes) == 3
    return path


def test_bundle_gives_the_training_models_outputs(run, tiny_world, bundle_path):
    state = load_checkpoint(latest_checkpoint(run))
    cfg, model = model_from_checkpoint(state)
    dataset = build_dataset(read_split(cfg.data, 'test', tiny_world))
    images = [load_rgb(sample) for sample in dataset.samples]
    transform = eval_transform(cfg.augmentation)
    with torch.no_grad():
        expected = model.eval()(torch.stack([transform(image) for image in images]))
    localizer = Localizer.from_file(bundle_path, device='cpu')
    assert localizer.scene_names == state['scene_names'] == ['atrium', 'corridor', 'lab']
    results = localizer.localize_batch(images, batch_size=7)
    np.testing.assert_array_equal([r.scene_index for r in results], expected['scene'].numpy())
    np.testing.assert_allclose([r.position for r in results], expected['position'].numpy(),
                               rtol=1e-5, atol=1e-5)
    quaternions = torch.nn.functional.normalize(expected['orientation'], dim=1).numpy()
    quaternions *= np.where(quaternions[:, 3:] < 0, -1.0, 1.0)  # the Localizer's w >= 0
    np.testing.assert_allclose([r.orientation for r in results], quaternions, atol=1e-5)
    np.testing.assert_allclose([r.scene_probabilities for r in results],
                               expected['scene_log_probs'].exp().numpy(), atol=1e-5)


def test_bundle_metadata_and_provenance(run, tiny_world, bundle_path):
    state = load_checkpoint(latest_checkpoint(run))
    bundle = load_bundle(bundle_path)
    cfg = load_config('tiny_test', ['schedule.epochs=1'])
    assert (bundle.preprocessing.resize, bundle.preprocessing.crop) == (72, 64)
    provenance = bundle.provenance
    assert provenance['config'] == cfg.to_dict() == state['config']
    train_samples = read_split(cfg.data, 'train', tiny_world)
    assert provenance['data_fingerprint'] == data_fingerprint(
        [s for samples in train_samples.values() for s in samples], tiny_world)
    assert provenance['torch_version'] == torch.__version__
    assert isinstance(provenance['git_commit'], str) and provenance['git_commit']
    assert provenance['exported_at'].endswith('+00:00')
    # 3 scenes x 6 training frames (one sequence per scene is held out), batch 4: 5 steps.
    assert provenance['checkpoint']['global_step'] == 5
    metrics = provenance['validation_metrics']
    assert [s['scene'] for s in metrics['scenes']] == bundle.scene_names
    calibration = provenance['calibration']
    assert calibration['split'] == 'calibration'
    assert sum(calibration['samples'].values()) + sum(calibration['misclassified'].values()) \
        == 18
    floor = np.array([export.DEFAULT_POSITION_FLOOR_M] * 3
                     + [export.DEFAULT_ORIENTATION_FLOOR_RAD] * 3) ** 2
    for name, covariance in bundle.covariance.items():
        assert np.all(np.linalg.eigvalsh(covariance) > 0)
        assert np.all(np.diag(covariance) >= floor * (1 - 1e-9)), name


def test_covariance_calibration_hand_values():
    angle = 0.1
    # Scene 0: three correct images with known errors, one misclassified outlier.
    # Scene 1: a single correct image, fewer than min_samples -> pooled covariance.
    gt_position = np.zeros((5, 3))
    pred_position = np.array([[1.0, 0, 0], [-1.0, 0, 0], [0, 2.0, 0], [50.0, 0, 0],
                              [0, 0, 3.0]])
    gt_orientation = np.tile(IDENTITY, (5, 1))
    pred_orientation = np.tile(IDENTITY, (5, 1))
    pred_orientation[2] = Rotation.from_rotvec([0, 0, -angle]).as_quat()
    predictions = Predictions(
        index=np.arange(5), gt_scene=np.array([0, 0, 0, 0, 1]),
        pred_scene=np.array([0, 0, 0, 2, 1]), gt_position=gt_position,
        pred_position=pred_position, gt_orientation=gt_orientation,
        pred_orientation=pred_orientation, scene_probabilities=np.full((5, 3), 1 / 3))
    errors = pose_error_vectors(gt_position, gt_orientation, pred_position, pred_orientation)
    np.testing.assert_allclose(errors[2], [0, -2.0, 0, 0, 0, angle], atol=1e-12)
    calibration = calibrate_covariance(['a', 'b', 'c'], predictions, position_floor_m=0.1,
                                       orientation_floor_rad=0.01, min_samples=2, shrinkage=0)
    floor = np.diag([0.01] * 3 + [1e-4] * 3)
    expected_a = np.zeros((6, 6))
    expected_a[0, 0] = 2 / 3  # errors -1, 1, 0 in x (second moment, not centred)
    expected_a[1, 1] = 4 / 3
    expected_a[5, 5] = angle ** 2 / 3
    expected_a[1, 5] = expected_a[5, 1] = -2.0 * angle / 3
    np.testing.assert_allclose(calibration.covariance['a'], expected_a + floor, atol=1e-12)
    assert calibration.samples == {'a': 3, 'b': 1, 'c': 0}
    assert calibration.misclassified == {'a': 1, 'b': 0, 'c': 0}
    assert calibration.pooled == ['b', 'c']
    pooled = errors[[0, 1, 2, 4]]
    np.testing.assert_allclose(calibration.covariance['b'], pooled.T @ pooled / 4 + floor,
                               atol=1e-12)
    with pytest.raises(ValueError, match='no calibration image'):
        calibrate_covariance(['a', 'b', 'c'], Predictions(**{
            **predictions.__dict__, 'pred_scene': np.array([1, 1, 1, 1, 0])}))


def test_evaluate_writes_metrics_plots_and_attention(bundle_path, tiny_world, tmp_path):
    out = tmp_path / 'eval'
    code = evaluate.main(['--weights', str(bundle_path), '--config', 'tiny_test.yaml',
                          '--data-root', str(tiny_world), '--split', 'test', '--out', str(out),
                          '--device', 'cpu', '--attention', '--attention-images', '5'])
    assert code == 0
    metrics = json.loads((out / 'metrics.json').read_text())
    with (out / 'per_image.csv').open(newline='') as stream:
        rows = list(csv.DictReader(stream))
    assert len(rows) == 18 and metrics['timing']['count'] == 18
    for scene in metrics['scenes']:
        errors = [float(r['position_error_m']) for r in rows if r['scene'] == scene['scene']]
        assert scene['median_position_m'] == pytest.approx(np.median(errors), abs=1e-4)
        assert scene['baseline_median_position_m'] is not None
    accuracy = np.mean([r['scene'] == r['predicted_scene'] for r in rows])
    assert metrics['scene_accuracy'] == pytest.approx(accuracy)
    assert '| **average** | 18 |' in (out / 'metrics.md').read_text()
    for name in ('error_cdf.png', 'trajectories.png', 'attention/attention_entropy.png',
                 'attention/attention_purity.png'):
        assert (out / name).read_bytes()[:8] == b'\x89PNG\r\n\x1a\n', name
    attention = json.loads((out / 'attention' / 'attention.json').read_text())
    stats = attention['tiny']
    assert len(stats['position']) == len(stats['orientation']) == 1  # 1 encoder layer each
    layer = stats['orientation'][0]
    assert 0 < layer['entropy'] <= math.log(16) + 1e-6  # 4 x 4 tokens at most log(16) nats
    assert 0 <= layer['purity_mean'] <= 1
    assert sum(layer['purity_histogram']) == 5 * 4 * 16  # images x heads x queries
    assert '### orientation encoder' in (out / 'attention' / 'attention.md').read_text()


def test_command_line_errors_name_the_problem(bundle_path, tiny_world, tmp_path, capsys):
    missing = tmp_path / 'missing.safetensors'
    assert evaluate.main(['--weights', str(missing), '--data-format', 'cambridge',
                          '--data-root', str(tiny_world), '--out', str(tmp_path / 'e')]) == 2
    assert str(missing) in capsys.readouterr().err
    assert export.main(['--run', str(tmp_path), '--out', str(tmp_path / 'b.safetensors')]) == 2
    assert 'holds no checkpoint' in capsys.readouterr().err
    assert evaluate.main(['--weights', str(bundle_path), '--data-format', 'cambridge',
                          '--data-root', str(tiny_world), '--scenes', 'atrium', 'nowhere',
                          '--out', str(tmp_path / 'e')]) == 2
    assert 'nowhere' in capsys.readouterr().err


def test_evaluating_a_crossfit_bundle_on_its_training_split_warns():
    provenance = {'calibration': {'split': 'crossfit'}}
    assert 'trained on' in evaluate.calibration_warning(provenance, 'train', 'train')
    assert evaluate.calibration_warning(provenance, 'test', 'train') is None
    held_out = {'calibration': {'split': 'calibration'}}
    assert 'fitted, not measured' in evaluate.calibration_warning(held_out, 'calibration')
