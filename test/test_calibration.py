"""Calibration on held-out training sequences, never on the test split, and its honesty."""
import json
from pathlib import Path
import shutil

import numpy as np
import pytest
from scipy.spatial.transform import Rotation
from test_correlation_fit import synthetic_block_fit

from mspr_ros.bundle import load_bundle
from mspr_ros.localizer import Localizer
from mspr_training import evaluate, export
from mspr_training.config import load_config
from mspr_training.data import load_rgb
from mspr_training.datasets import read_split
from mspr_training.export import CalibrationSplitError, export_bundle
from mspr_training.metrics import covariance_coverage, NOMINAL_COVERAGE_3D, pose_error_vectors
from mspr_training.train import train


def gaussian_errors(covariance: np.ndarray, count: int, seed: int) -> np.ndarray:
    """Return ``count`` draws of a zero-mean Gaussian with ``covariance`` (6 x 6)."""
    return np.random.default_rng(seed).multivariate_normal(np.zeros(6), covariance, size=count)


def test_coverage_of_an_honest_covariance_is_nominal():
    """Errors drawn from the published covariance fall inside 1/2/3 sigma at the chi2(3) rates."""
    axes = np.random.default_rng(0).normal(size=(6, 6))
    covariance = axes @ axes.T + 0.1 * np.eye(6)  # correlated position and rotation
    errors = gaussian_errors(covariance, 20000, 1)
    scene = np.repeat([0, 1], 10000)
    coverage = covariance_coverage(errors, np.broadcast_to(covariance, (20000, 6, 6)), scene,
                                   ['a', 'b'])
    for block in (coverage.position, coverage.rotation):
        for level, nominal in NOMINAL_COVERAGE_3D.items():
            assert block.inside[level] == pytest.approx(nominal, abs=0.012)
        assert block.mean_nees == pytest.approx(3.0, abs=0.1)
        assert block.images == 20000
    assert set(coverage.per_scene) == {'a', 'b'}
    assert coverage.per_scene['b']['position'].images == 10000
    assert '| all | rotation |' in coverage.to_markdown()


def test_coverage_exposes_an_overconfident_covariance():
    """A covariance 4x too small (half the standard deviation) covers far less, NEES ~ 12."""
    covariance = np.diag([0.04, 0.09, 0.01, 1e-4, 4e-4, 9e-4])
    errors = gaussian_errors(covariance, 20000, 2)
    coverage = covariance_coverage(errors, np.broadcast_to(covariance / 4, (20000, 6, 6)),
                                   np.zeros(20000, dtype=int), ['a'])
    assert coverage.position.inside[2] == pytest.approx(0.199, abs=0.015)  # 2 sigma -> 1 sigma
    assert coverage.rotation.mean_nees == pytest.approx(12.0, rel=0.05)


def test_pose_error_vectors_are_the_covariance_parametrisation():
    """A 0.1 rad rotation about the scene's z axis applied to the estimate is error (0,0,0.1)."""
    estimate = Rotation.from_euler('xyz', [0.3, -0.2, 1.0])
    truth = Rotation.from_rotvec([0, 0, 0.1]) * estimate
    errors = pose_error_vectors(np.array([[1.0, 2.0, 3.0]]), truth.as_quat()[None],
                                np.array([[1.5, 2.0, 2.0]]), estimate.as_quat()[None])
    np.testing.assert_allclose(errors[0], [-0.5, 0.0, 1.0, 0.0, 0.0, 0.1], atol=1e-12)


@pytest.fixture(scope='module')
def run(tiny_world, tmp_path_factory, isolated_torch) -> Path:
    """Train tiny_test.yaml for one epoch on the training sequences left after the hold-out."""
    out = tmp_path_factory.mktemp('run')
    train(load_config('tiny_test', ['schedule.epochs=1']), out, tiny_world)
    return out


def test_export_refuses_the_evaluation_split(run, tmp_path, capsys):
    """Calibrating on the split results are reported on stops with a clear error."""
    for split in ('test', 'val'):  # 'val' is data.val_split, the test split in tiny_test.yaml
        with pytest.raises(CalibrationSplitError, match="is the evaluation split 'test'"):
            export_bundle(run, tmp_path / 'b.safetensors', calibration_split=split,
                          device='cpu')
    with pytest.raises(CalibrationSplitError, match="is the training split 'train'"):
        export_bundle(run, tmp_path / 'b.safetensors', calibration_split='train', device='cpu')
    # This run held sequences out instead of training fold runs: there is nothing to cross-fit.
    with pytest.raises(CalibrationSplitError, match='trained no cross-fitting fold runs'):
        export_bundle(run, tmp_path / 'b.safetensors', calibration_split='crossfit',
                      device='cpu')
    assert export.main(['--run', str(run), '--out', str(tmp_path / 'b.safetensors'),
                        '--calibration-split', 'test', '--device', 'cpu']) == 2
    assert 'evaluation split' in capsys.readouterr().err
    assert not (tmp_path / 'b.safetensors').exists()


def test_export_calibrates_on_a_split_of_its_own(run, tiny_world, tmp_path, monkeypatch):
    """Walks recorded under the robot's own conditions, a split neither trained nor tested on.

    The README's advice where no fold count calibrates (benchmarks/README.md, uncertainty): the
    split is named on the command line, read like any other, and the bundle says where its
    covariance came from.
    """
    root = tmp_path / 'world'
    shutil.copytree(tiny_world, root)
    for listing in root.glob('*/dataset_test.txt'):   # the site walks (their files suffice here)
        shutil.copy(listing, listing.with_name('dataset_site.txt'))
    bundle_file = tmp_path / 'site.safetensors'
    # The tiny model localises too few frames of the tiny walks for a fit (50 pairs): the fits
    # are those of a synthetic walk whose position and rotation errors decorrelate apart, so
    # that the bundle carries fitted per-block models to check.
    fit = synthetic_block_fit()
    monkeypatch.setattr(export, 'fit_correlations',
                        lambda scenes, *_: {scene: fit for scene in scenes})
    assert export.main(['--run', str(run), '--out', str(bundle_file), '--calibration-split',
                        'site', '--data-root', str(root), '--device', 'cpu',
                        '--error-correlation-blocks', 'per_block']) == 0
    bundle = load_bundle(bundle_file)
    calibration = bundle.provenance['calibration']
    assert calibration['split'] == 'site' and calibration['method'] == 'split'
    # A model per block: the bundle carries each fitted scene's two block models as one.
    assert calibration['error_correlation_blocks'] == 'per_block'
    fits = {scene: fit for scene, fit in calibration['error_correlation'].items() if fit}
    assert fits and set(bundle.error_correlation) == set(fits)
    for scene, summary in fits.items():
        model = bundle.error_correlation[scene]
        assert model == fit.per_block_model and model.per_block
        assert model.block('rotation').to_dict() == summary['block_models']['rotation']
        assert model.block('position').to_dict() == summary['block_models']['position']
    joint_file = tmp_path / 'joint.safetensors'
    assert export.main(['--run', str(run), '--out', str(joint_file), '--calibration-split',
                        'site', '--data-root', str(root), '--device', 'cpu',
                        '--error-correlation-blocks', 'joint']) == 0
    joint = load_bundle(joint_file)
    assert joint.provenance['calibration']['error_correlation_blocks'] == 'joint'
    assert set(joint.error_correlation.values()) == {fit.model}
    assert calibration['predicted_by'] == 'the exported model'
    assert set(bundle.covariance) == set(bundle.scene_names)
    # A split name the dataset does not have stops the export naming what is missing.
    with pytest.raises(Exception, match='dataset_elsewhere.txt'):
        export_bundle(run, tmp_path / 'x.safetensors', calibration_split='elsewhere',
                      data_root=root, device='cpu')
    assert not (tmp_path / 'x.safetensors').exists()


@pytest.fixture(scope='module')
def bundle_path(run, tmp_path_factory) -> Path:
    """Export with the default calibration split (the held-out training sequences)."""
    path, _ = export_bundle(run, tmp_path_factory.mktemp('bundle') / 'tiny.safetensors',
                            device='cpu')
    return path


def test_export_calibrates_on_held_out_training_sequences(bundle_path, tiny_world):
    """The covariance comes from sequences that were neither trained nor tested on."""
    bundle = load_bundle(bundle_path)
    calibration = bundle.provenance['calibration']
    assert calibration['split'] == 'calibration' and calibration['test_split'] == 'test'
    assert calibration['method'] == 'held-out walks'
    assert calibration['held_out_sequences_per_scene'] == 1
    # The error correlation is fitted on the same held-out walks; a scene whose walks hold too
    # few correctly localised frames gets none (the node falls back), and the bundle says so.
    fitted = {scene for scene, fit in calibration['error_correlation'].items() if fit}
    assert set(calibration['error_correlation']) == set(bundle.scene_names)
    assert set(bundle.error_correlation) == fitted
    for scene in fitted:
        assert bundle.error_correlation[scene].source == 'fitted'
        # A model per block by default: position's fields, rotation's model in ``rotation``.
        fit = calibration['error_correlation'][scene]
        assert bundle.error_correlation[scene].to_dict() == {
            **fit['block_models']['position'], 'rotation': fit['block_models']['rotation']}
    assert calibration['error_correlation_blocks'] == 'per_block'
    data = load_config('tiny_test').data
    held = read_split(data, 'calibration', tiny_world)
    trained = read_split(data, 'train', tiny_world)
    tested = read_split(data, 'test', tiny_world)
    for scene in held:
        held_paths = {s.image_path for s in held[scene]}
        assert held_paths.isdisjoint({s.image_path for s in trained[scene]})
        assert held_paths.isdisjoint({s.image_path for s in tested[scene]})
        counted = calibration['samples'][scene] + calibration['misclassified'][scene]
        assert counted == len(held[scene]) == 6  # one of two 6-frame training sequences


def test_evaluate_reports_coverage_of_the_published_covariance(bundle_path, tiny_world,
                                                               tmp_path):
    """mspr-evaluate's coverage equals the chi-square test of each image's covariance."""
    data = load_config('tiny_test').data
    result = evaluate.evaluate_bundle(bundle_path, data, 'test', tmp_path / 'eval',
                                      data_root=tiny_world, device='cpu')
    coverage = result.coverage
    samples = [s for _, scene in sorted(read_split(data, 'test', tiny_world).items())
               for s in scene]
    results = Localizer.from_file(bundle_path, device='cpu').localize_batch(
        [load_rgb(s) for s in samples])
    errors = pose_error_vectors(np.array([s.position for s in samples]),
                                np.array([s.orientation for s in samples]),
                                np.array([r.position for r in results]),
                                np.array([r.orientation for r in results]))
    for block, part in ((coverage.position, slice(0, 3)), (coverage.rotation, slice(3, 6))):
        nees = np.array([e[part] @ np.linalg.inv(r.covariance[part, part]) @ e[part]
                         for e, r in zip(errors, results)])
        assert block.images == len(samples) == 18
        assert block.mean_nees == pytest.approx(nees.mean(), rel=1e-6)
        for level in (1, 2, 3):
            assert block.inside[level] == pytest.approx(np.mean(nees <= level ** 2))
    metrics = json.loads((tmp_path / 'eval' / 'metrics.json').read_text())
    stored = metrics['extra']['covariance_coverage']
    assert stored['position']['inside']['2'] == coverage.position.inside[2]
    assert 'covariance_coverage_warning' not in metrics['extra']
    assert '## Covariance coverage' in (tmp_path / 'eval' / 'metrics.md').read_text()


def test_evaluating_on_the_calibration_split_is_flagged(bundle_path, tiny_world, tmp_path):
    """Coverage measured on the split the covariance was fitted to is marked as such."""
    data = load_config('tiny_test').data
    result = evaluate.evaluate_bundle(bundle_path, data, 'calibration', tmp_path / 'eval',
                                      data_root=tiny_world, device='cpu')
    assert 'fitted, not measured' in result.report.extra['covariance_coverage_warning']
