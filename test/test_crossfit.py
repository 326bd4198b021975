"""Cross-fitting (issue 25): the deployed run trains on every walk, the fold runs predict them.

The folds cover every training walk once; the fold runs train beside the deployed run, reuse its
cached backbone maps, resume where they stopped; ``mspr-export`` calibrates the covariance and
the error correlation on their out-of-fold predictions and refuses to run without them.
"""
import json
import os
from pathlib import Path
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
from scipy.spatial.transform import Rotation
import torch
from torch import nn

from mspr_ros.bundle import load_bundle
from mspr_training import calibration, export, feature_cache, train as train_module
from mspr_training.calibration import fit_correlations
from mspr_training.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint
from mspr_training.config import load_config
from mspr_training.correlation_fit import fit_error_correlation
from mspr_training.crossfit import CrossfitError, FeatureSource, fold_dir, TrainingTime
from mspr_training.data import DatasetError, MultiSceneDataset, PoseSample
from mspr_training.datasets import (crossfit_folds, data_fingerprint, read_crossfit_folds,
                                    read_split)
from mspr_training.engine import Predictions
from mspr_training.export import CalibrationSplitError, export_bundle
from mspr_training.feature_cache import FeatureCache
from mspr_training.train import train
from training_runs import wait_for_mid_epoch_checkpoint

# tiny_test.yaml cross-fitted with a frozen ImageNet backbone on cached maps (the frozen-backbone
# recipe's path, and scenes the tiny model tells apart): 3 scenes x 2 walks of 6 frames.
OVERRIDES = ['data.calibration_split=crossfit', 'model.backbone_weights=imagenet',
             'model.freeze_backbone=true', 'augmentation.enabled=false', 'schedule.epochs=3']
FRAMES_PER_SCENE = 12
SUBPROCESS_TIMEOUT_S = 300


def _sample(scene: str, sequence: str, index: int) -> PoseSample:
    return PoseSample(scene, sequence, np.array([index, 0.0, 0.0]), np.array([0, 0, 0, 1.0]))


def _flat(samples_by_scene):
    return [s for scene in sorted(samples_by_scene) for s in samples_by_scene[scene]]


# ---------------------------------------------------------------------------------------------
# The folds
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize('folds', [2, 3])
def test_folds_hold_out_every_walk_exactly_once(folds):
    names = ['seq1', 'seq2', 'seq3', 'seq10', 'seq4']  # natural order: 1 2 3 4 10
    samples = [_sample('a', name, i) for name in names for i in range(3)]
    parts = crossfit_folds(samples, folds, 'a')
    assert len(parts) == folds
    ordered = ['seq1', 'seq2', 'seq3', 'seq4', 'seq10']
    for fold, part in enumerate(parts):
        assert {s.sequence for s in part} == set(ordered[fold::folds])
        assert part == [s for s in samples if s.sequence in set(ordered[fold::folds])]
    held = [id(s) for part in parts for s in part]
    assert sorted(held) == sorted(id(s) for s in samples)  # each sample in one fold, once


def test_fold_runs_train_on_the_rest(tiny_world):
    data = load_config('tiny_test', OVERRIDES).data
    train = read_split(data, 'train', tiny_world)  # nothing held out of the deployed run
    assert {len(samples) for samples in train.values()} == {FRAMES_PER_SCENE}
    parts = read_crossfit_folds(data, tiny_world)
    assert len(parts) == 2
    for scene, samples in train.items():
        paths = [s.image_path for s in samples]
        held = [s.image_path for _, part in parts for s in part[scene]]
        assert sorted(held) == sorted(paths)
        for fold, (training, held_out) in enumerate(parts):
            assert {s.sequence for s in held_out[scene]} == {f'seq{fold + 1}'}
            kept = {s.image_path for s in training[scene]}
            assert kept.isdisjoint(s.image_path for s in held_out[scene])
            assert kept | {s.image_path for s in held_out[scene]} == set(paths)


def test_a_single_walk_scene_is_cut_into_blocks_and_says_so(caplog):
    samples = [_sample('heads', 'seq-02', i) for i in range(9)]
    with caplog.at_level('WARNING'):
        parts = crossfit_folds(samples, 2, 'heads')
    assert [[s.position[0] for s in part] for part in parts] == [[0, 1, 2, 3], [4, 5, 6, 7, 8]]
    assert 'heads' in caplog.text and 'contiguous blocks' in caplog.text
    assert [len(part) for part in crossfit_folds(samples, 4, 'heads')] == [2, 2, 3, 2]
    with pytest.raises(DatasetError, match="scene 'x': 1 training image"):
        crossfit_folds([_sample('x', 's', 0)], 2, 'x')


def test_a_single_walk_scene_still_trains_and_exports(tiny_world, tmp_path, caplog,
                                                      isolated_torch):
    """One walk of one scene: two blocks of its frames, a warning, and a bundle all the same."""
    world = tmp_path / 'world'
    shutil.copytree(tiny_world, world)
    listing = world / 'atrium' / 'dataset_train.txt'
    lines = listing.read_text().splitlines()
    listing.write_text('\n'.join(line for line in lines if 'seq2/' not in line) + '\n')
    cfg = load_config('tiny_test', ['data.calibration_split=crossfit', 'schedule.epochs=1'])
    with caplog.at_level('WARNING'):
        result = train(cfg, tmp_path / 'run', world)
    assert 'scene atrium has 1 training sequence(s)' in caplog.text
    assert len(result.folds) == 2
    path, _ = export_bundle(tmp_path / 'run', tmp_path / 'b.safetensors', device='cpu')
    fold_runs = load_bundle(path).provenance['calibration']['fold_runs']
    assert [run['held_out_sequences']['atrium'] for run in fold_runs] == [['seq1'], ['seq1']]
    assert sum(run['held_out_images'] for run in fold_runs) == 6 + 2 * FRAMES_PER_SCENE


# ---------------------------------------------------------------------------------------------
# Helpers of the fold runs
# ---------------------------------------------------------------------------------------------

class _Backboned(nn.Module):
    def __init__(self, value: float) -> None:
        super().__init__()
        self.backbone = nn.Linear(2, 2)
        nn.init.constant_(self.backbone.weight, value)
        nn.init.zeros_(self.backbone.bias)


def test_fold_maps_are_the_deployed_runs_maps_of_the_same_images(tmp_path):
    samples = [PoseSample('a', 's', np.zeros(3), np.array([0, 0, 0, 1.0]),
                          image_path=tmp_path / f'{i}.png') for i in range(4)]
    dataset = MultiSceneDataset({'a': samples})
    views = 2
    cache = FeatureCache(torch.randn(4 * views, 3, 2, 2), torch.randn(4 * views, 2, 2, 2),
                         'key', views)
    source = FeatureSource.of(cache, dataset, tmp_path, _Backboned(1.0), None)
    subset = source.subset([samples[2], samples[0]], tmp_path, _Backboned(1.0))
    assert len(subset) == 2 and subset.views == views
    for item, original in enumerate([2, 0]):
        for view in range(views):
            assert torch.equal(subset.feat_t[subset.row(item, view)],
                               cache.feat_t[cache.row(original, view)])
            assert torch.equal(subset.feat_rot[subset.row(item, view)],
                               cache.feat_rot[cache.row(original, view)])
    assert source.subset(samples[:1], tmp_path, _Backboned(2.0)) is None  # other backbone
    stranger = PoseSample('a', 's', np.zeros(3), np.array([0, 0, 0, 1.0]),
                          image_path=tmp_path / 'other.png')
    assert source.subset([stranger], tmp_path, _Backboned(1.0)) is None


def test_training_time_adds_resumed_sessions_and_restarts_with_the_run(tmp_path):
    timing = TrainingTime(tmp_path)
    common = dict(global_step=10, train_samples=36, folds=2)
    timing.record('main', 10.0, fresh=True, trained=True, **common)
    timing.record('fold_0', 4.0, fresh=True, trained=True, **common)
    assert TrainingTime(tmp_path).summary(2)['extra_s'] is None  # fold 1 not trained yet
    timing.record('fold_1', 3.0, fresh=True, trained=True, **common)
    timing.record('fold_1', 2.0, fresh=False, trained=True, **common)  # resumed
    timing.record('main', 1.0, fresh=False, trained=False, **common)  # found complete
    reread = TrainingTime(tmp_path)
    assert reread.summary(2) == {'main_s': 10.0, 'folds_s': [4.0, 5.0], 'extra_s': 9.0,
                                 'extra_ratio': 0.9}
    assert reread.runs['fold_1']['sessions'] == 2
    stored = json.loads((tmp_path / 'crossfit' / 'timing.json').read_text())
    assert stored['extra_ratio'] == 0.9
    reread.record('main', 7.0, fresh=True, trained=True, **common)  # the run started over
    assert TrainingTime(tmp_path).summary(2) == {'main_s': 7.0, 'folds_s': [None, None],
                                                 'extra_s': None, 'extra_ratio': None}


def test_correlation_walks_are_the_correct_frames_of_each_walk_in_order(monkeypatch):
    seen = []

    def record(walks, covariance, **kwargs):
        seen.append(walks)
        return None

    monkeypatch.setattr(calibration, 'fit_error_correlation', record)
    count = 6
    positions = np.arange(count * 3, dtype=float).reshape(count, 3)
    quats = Rotation.from_rotvec(np.outer(np.arange(count), [0, 0, 0.1])).as_quat()
    predictions = Predictions(
        index=np.arange(count), gt_scene=np.array([0, 0, 0, 0, 1, 0]),
        pred_scene=np.array([0, 1, 0, 0, 1, 0]), gt_position=positions,
        pred_position=positions + 0.1, gt_orientation=quats, pred_orientation=quats,
        scene_probabilities=np.full((count, 2), 0.5))
    walks = ['w1', 'w1', 'w1', 'w2', 'w3', 'w2']
    fits = fit_correlations(['a', 'b'], predictions, walks, {'a': np.eye(6), 'b': np.eye(6)},
                            [10, 20, 30, 40, 50, None])
    assert fits == {'a': None, 'b': None}
    scene_a, scene_b = seen
    # Frame 1 was misclassified: left out; w2 is frames 3 and 5 in that order.
    assert [walk.positions[:, 0].tolist() for walk in scene_a] == [[0.0, 6.0], [9.0, 15.0]]
    np.testing.assert_allclose(scene_a[0].errors[:, :3], -0.1)
    assert scene_a[0].stamps_ns.tolist() == [10, 30]
    assert scene_a[1].stamps_ns is None  # one frame without a stamp: time left out
    assert [len(walk.positions) for walk in scene_b] == [1]


# ---------------------------------------------------------------------------------------------
# mspr-train and mspr-export end to end
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def crossfit_run(tiny_world, tmp_path_factory, isolated_torch):
    """Train the deployed run and its 2 fold runs; count the backbone passes."""
    out = tmp_path_factory.mktemp('crossfit') / 'run'
    computed = []
    real = feature_cache.compute_features

    def counting(model, dataset, *args, **kwargs):
        computed.append(len(dataset))
        return real(model, dataset, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(feature_cache, 'compute_features', counting)
        result = train(load_config('tiny_test', OVERRIDES), out, tiny_world)
    return out, result, computed


def test_the_deployed_run_trains_on_every_walk_and_the_folds_on_the_rest(
        crossfit_run, tiny_world):
    out, result, computed = crossfit_run
    cfg = load_config('tiny_test', OVERRIDES)
    # 36 frames, balanced over 3 scenes, batch 4: 9 steps per epoch; a fold keeps 18: 5 steps.
    assert result.global_step == 3 * 9
    deployed = load_checkpoint(latest_checkpoint(out))
    assert deployed['crossfit_fold'] is None and deployed['feature_cache']
    assert deployed['data_fingerprint'] == data_fingerprint(
        _flat(read_split(cfg.data, 'train', tiny_world)), tiny_world)
    parts = read_crossfit_folds(cfg.data, tiny_world)
    assert [fold.global_step for fold in result.folds] == [3 * 5, 3 * 5]
    for fold, (training, _) in enumerate(parts):
        state = load_checkpoint(latest_checkpoint(fold_dir(out, fold)))
        assert state['crossfit_fold'] == {'fold': fold, 'folds': 2}
        assert state['config'] == deployed['config']  # same config, seeds and schedule
        assert state['data_fingerprint'] == data_fingerprint(_flat(training), tiny_world)
    # The backbone ran once, over the deployed run's 36 images: the folds took those maps.
    assert computed == [3 * FRAMES_PER_SCENE]
    timing = json.loads((out / 'crossfit' / 'timing.json').read_text())
    assert timing['runs']['main']['train_samples'] == 36
    assert [timing['runs'][f'fold_{k}']['train_samples'] for k in (0, 1)] == [18, 18]
    assert result.timing['extra_s'] == pytest.approx(sum(result.timing['folds_s']))
    assert result.timing['extra_ratio'] == pytest.approx(
        result.timing['extra_s'] / result.timing['main_s'])


@pytest.fixture(scope='module')
def crossfit_bundle(crossfit_run, tmp_path_factory):
    """Export the deployed run; record the walks the error correlation is fitted on."""
    out, _, _ = crossfit_run
    walks = {}

    def recording(scene_walks, covariance, **kwargs):
        # min_pairs=1: the tiny walks (6 frames) hold fewer pairs than a real fit wants.
        walks[len(walks)] = scene_walks
        return fit_error_correlation(scene_walks, covariance, min_pairs=1)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(calibration, 'fit_error_correlation', recording)
        path, report = export_bundle(out, tmp_path_factory.mktemp('bundle') / 'cf.safetensors',
                                     device='cpu')
    return path, report, walks


def test_export_calibrates_on_out_of_fold_errors(crossfit_run, crossfit_bundle, tiny_world):
    out, _, _ = crossfit_run
    path, report, walks = crossfit_bundle
    bundle = load_bundle(path)
    calibration_record = bundle.provenance['calibration']
    assert calibration_record['split'] == 'crossfit'
    assert calibration_record['method'] == 'cross-fitting' and calibration_record['folds'] == 2
    assert calibration_record['held_out_sequences_per_scene'] == 0
    # Every training frame is predicted once, by the fold run that left its walk out.
    for scene in bundle.scene_names:
        assert calibration_record['samples'][scene] + \
            calibration_record['misclassified'][scene] == FRAMES_PER_SCENE
    assert sum(scene.images for scene in report.scenes) == 3 * FRAMES_PER_SCENE
    for fold, run in enumerate(calibration_record['fold_runs']):
        assert run['fold'] == fold and run['epoch'] == 3 and run['global_step'] == 15
        assert Path(run['checkpoint']).parent == fold_dir(out, fold)
        assert run['held_out_sequences'] == {s: [f'seq{fold + 1}'] for s in bundle.scene_names}
    # The bundle's weights are the deployed run's (trained on every walk).
    deployed = load_checkpoint(latest_checkpoint(out))
    assert bundle.provenance['checkpoint']['path'] == deployed['path']
    for name, tensor in deployed['model'].items():
        assert torch.equal(bundle.state_dict[name], tensor), name
    timing = calibration_record['training_time']
    assert timing['main_s'] > 0 and all(seconds > 0 for seconds in timing['folds_s'])
    assert timing['extra_ratio'] == pytest.approx(timing['extra_s'] / timing['main_s'])
    # The error correlation: fitted per scene on the held-out walks, in walk order.
    fits = calibration_record['error_correlation']
    assert set(fits) == set(bundle.scene_names) and len(walks) == 3
    assert set(bundle.error_correlation) == {scene for scene, fit in fits.items() if fit}
    assert bundle.error_correlation, 'no scene got a fitted error correlation'
    for scene, model in bundle.error_correlation.items():
        # A model per block (the default): position's fit, rotation's in ``rotation``.
        blocks = fits[scene]['block_models']
        assert model.source == 'fitted' and model.per_block
        assert model.to_dict() == {**blocks['position'], 'rotation': blocks['rotation']}
    assert calibration_record['error_correlation_blocks'] == 'per_block'
    train = read_split(load_config('tiny_test', OVERRIDES).data, 'train', tiny_world)
    for index, scene in enumerate(bundle.scene_names):
        sequences = {seq: np.array([s.position for s in train[scene] if s.sequence == seq])
                     for seq in ('seq1', 'seq2')}
        for walk in walks[index]:
            # A walk is the correctly localised frames of one sequence, in walk order.
            matches = [seq for seq, positions in sequences.items()
                       if all(np.isclose(positions, p).all(axis=1).any()
                              for p in walk.positions)]
            assert len(matches) == 1
            order = [int(np.flatnonzero(np.isclose(sequences[matches[0]], p).all(axis=1))[0])
                     for p in walk.positions]
            assert order == sorted(order)


def test_export_refuses_without_the_fold_runs(crossfit_run, tiny_world, tmp_path, capsys,
                                              isolated_torch):
    out, _, _ = crossfit_run
    copy = tmp_path / 'run'
    shutil.copytree(out, copy)
    shutil.rmtree(fold_dir(copy, 1))
    bundle = tmp_path / 'b.safetensors'
    with pytest.raises(CrossfitError, match=r'crossfit/fold_1: no checkpoint of cross-fitting '
                                            r'fold 1 of 2.*run mspr-train'):
        export_bundle(copy, bundle, device='cpu')
    assert export.main(['--run', str(copy), '--out', str(bundle), '--device', 'cpu']) == 2
    assert 'fold_1' in capsys.readouterr().err and not bundle.exists()
    with pytest.raises(CalibrationSplitError, match='none was held out'):
        export_bundle(copy, bundle, calibration_split='calibration', device='cpu')
    # An unfinished fold run is refused too (its errors would be those of a worse model).
    for path in list_checkpoints(fold_dir(copy, 0))[1:]:
        path.unlink()
    with pytest.raises(CrossfitError, match=r'fold_0 .*unfinished \(epoch 1 of 3\)'):
        export_bundle(copy, bundle, device='cpu')
    # Without calibration the bundle needs no fold run.
    export_bundle(copy, bundle, calibration_split=None, device='cpu')
    assert load_bundle(bundle).error_correlation == {}


def test_fold_runs_resume_where_they_stopped(crossfit_run, tiny_world, tmp_path, capsys,
                                             isolated_torch):
    """A session that stopped after the deployed run, then one that stopped in fold 0."""
    out, _, _ = crossfit_run
    copy = tmp_path / 'run'
    shutil.copytree(out, copy)
    shutil.rmtree(fold_dir(copy, 1))
    for path in list_checkpoints(fold_dir(copy, 0))[1:]:
        path.unlink()  # fold 0 stopped after its first epoch
    before = json.loads((copy / 'crossfit' / 'timing.json').read_text())['runs']
    command = ['--out', str(copy), '--resume', '--data-root', str(tiny_world)]
    assert train_module.main([*command, '--no-crossfit-folds']) == 0
    assert not fold_dir(copy, 1).exists()
    assert train_module.main(command) == 0
    assert 'training time: deployed run' in capsys.readouterr().out
    for fold in (0, 1):
        expected = load_checkpoint(latest_checkpoint(fold_dir(out, fold)))
        actual = load_checkpoint(latest_checkpoint(fold_dir(copy, fold)))
        assert actual['progress'] == expected['progress']
        for name, tensor in expected['model'].items():
            assert torch.equal(actual['model'][name], tensor), (fold, name)
    runs = json.loads((copy / 'crossfit' / 'timing.json').read_text())['runs']
    assert runs['main'] == before['main']  # the sessions that found it complete add nothing
    assert runs['fold_0']['sessions'] == before['fold_0']['sessions'] + 1
    assert runs['fold_0']['seconds'] > before['fold_0']['seconds']
    assert runs['fold_1']['sessions'] == 1


def test_a_killed_crossfit_run_resumes_to_the_same_models(crossfit_run, tiny_world, tmp_path):
    """SIGKILL inside the fold runs, then ``mspr-train --resume``: main, then the folds."""
    out, _, _ = crossfit_run
    killed = tmp_path / 'killed'
    log = tmp_path / 'killed.log'
    overrides = [arg for value in [*OVERRIDES, 'checkpoint.every_iters=2']
                 for arg in ('--set', value)]
    command = [sys.executable, '-m', 'mspr_training.train', '--config', 'tiny_test.yaml',
               '--data-root', str(tiny_world), '--out', str(killed), *overrides]
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    with log.open('w') as stream:
        process = subprocess.Popen(command, env=env, stdout=stream, stderr=subprocess.STDOUT)
        wait_for_mid_epoch_checkpoint(process, fold_dir(killed, 0), log, SUBPROCESS_TIMEOUT_S)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=SUBPROCESS_TIMEOUT_S)
    assert process.returncode == -signal.SIGKILL
    resumed = subprocess.run([sys.executable, '-m', 'mspr_training.train', '--out', str(killed),
                              '--resume'], env=env, text=True, capture_output=True,
                             timeout=SUBPROCESS_TIMEOUT_S)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    for folder, reference in [(killed, out)] + [(fold_dir(killed, k), fold_dir(out, k))
                                                for k in (0, 1)]:
        expected = load_checkpoint(latest_checkpoint(reference))
        actual = load_checkpoint(latest_checkpoint(folder))
        assert actual['progress'] == expected['progress'], folder
        for name, tensor in expected['model'].items():
            assert torch.equal(actual['model'][name], tensor), (folder, name)
