"""Training on a tiny rendered world: exact resume after SIGKILL, feature cache, fine-tuning."""
import os
from pathlib import Path
import signal
import subprocess
import sys

import pytest
import torch

from mspr_ros.model.ms_transformer import build_model
from mspr_training import feature_cache
from mspr_training.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint
from mspr_training.config import ConfigError, load_config
from mspr_training.data import load_rgb
from mspr_training.datasets import build_dataset, read_split
from mspr_training.feature_cache import CachedFeatureDataset, load_or_compute
from mspr_training.train import train
from mspr_training.transforms import eval_transform
from training_runs import wait_for_mid_epoch_checkpoint

# tiny_test.yaml: 3 scenes x 12 frames, of which one 6-frame sequence per scene is the calibration
# split: 18 training frames, balanced, batch 4 -> 5 iterations per epoch, 2 epochs.
ITERATIONS_PER_EPOCH = 5
TOTAL_STEPS = 2 * ITERATIONS_PER_EPOCH
SUBPROCESS_TIMEOUT_S = 300


@pytest.fixture(scope='module')
def reference_run(tiny_world, tmp_path_factory, isolated_torch) -> Path:
    """Train tiny_test.yaml uninterrupted, in this process."""
    out = tmp_path_factory.mktemp('reference')
    result = train(load_config('tiny_test'), out, tiny_world)
    assert result.global_step == TOTAL_STEPS
    return out


def _train_command(data_root: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, '-m', 'mspr_training.train', '--config', 'tiny_test.yaml',
            '--data-root', str(data_root), '--out', str(out), *extra]


def _subprocess_env() -> dict[str, str]:
    return {**os.environ, 'OMP_NUM_THREADS': '1'}


def _latest_mid_epoch_checkpoint(out: Path) -> dict:
    """Return the newest mid-epoch checkpoint of a run (loaded)."""
    mid_epoch = [path for path in list_checkpoints(out) if path.name.endswith('_iter.pt')]
    return load_checkpoint(mid_epoch[-1])


def _log_column(run: Path, kind: str, column: int) -> list[str]:
    """Return one column of the CSV log rows of ``kind`` ('iter' or 'epoch')."""
    return [line.split(',')[column] for line in (run / 'log.csv').read_text().splitlines()
            if line.startswith(f'{kind},')]


def test_sigkill_mid_epoch_then_resume_gives_identical_parameters(
        tiny_world, reference_run, tmp_path, isolated_torch):
    # The killed run is configured far longer than it lives, so the kill always lands in the
    # middle of training however the machine schedules the two processes; the run is then
    # resumed to the end of the epoch after the kill and compared with an uninterrupted run of
    # that length (StepLR does not depend on the total number of epochs).
    out = tmp_path / 'killed'
    log = tmp_path / 'killed.log'
    command = _train_command(tiny_world, out, '--set', 'checkpoint.every_iters=2',
                             '--set', 'schedule.epochs=100')
    with log.open('w') as stream:
        process = subprocess.Popen(command, env=_subprocess_env(), stdout=stream,
                                   stderr=subprocess.STDOUT)
        wait_for_mid_epoch_checkpoint(process, out, log, SUBPROCESS_TIMEOUT_S)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=SUBPROCESS_TIMEOUT_S)
    assert process.returncode == -signal.SIGKILL
    interrupted = _latest_mid_epoch_checkpoint(out)
    assert 0 < interrupted['progress']['iteration'] < ITERATIONS_PER_EPOCH
    epochs = interrupted['progress']['epoch'] + 2

    # Without --config and --data-root: the run's config.yaml and the checkpoint's data root.
    resumed = subprocess.run([sys.executable, '-m', 'mspr_training.train', '--out', str(out),
                              '--resume', interrupted['path'],
                              '--set', f'schedule.epochs={epochs}'],
                             env=_subprocess_env(), text=True, capture_output=True,
                             timeout=SUBPROCESS_TIMEOUT_S)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f'resuming from {interrupted["path"]}' in resumed.stderr

    reference = reference_run
    if epochs != 2:  # the kill came late: train a reference of the same length
        reference = tmp_path / 'reference'
        train(load_config('tiny_test', [f'schedule.epochs={epochs}']), reference, tiny_world)
    expected = load_checkpoint(latest_checkpoint(reference))
    actual = load_checkpoint(latest_checkpoint(out))
    assert actual['progress'] == expected['progress']
    assert expected['progress']['global_step'] == epochs * ITERATIONS_PER_EPOCH
    for name, tensor in expected['model'].items():
        assert torch.equal(actual['model'][name], tensor), name
    for name, tensor in expected['criterion'].items():
        assert torch.equal(actual['criterion'][name], tensor), name
    for index, state in expected['optimizer']['state'].items():
        assert torch.equal(actual['optimizer']['state'][index]['exp_avg_sq'],
                           state['exp_avg_sq'])
    # Every step is logged once (the killed run's rows after the checkpoint were dropped), and
    # the epoch mean losses, which include the batches before the kill, are the reference's.
    steps = [int(step) for step in _log_column(out, 'iter', 2)]
    assert steps == list(range(1, epochs * ITERATIONS_PER_EPOCH + 1))
    assert _log_column(out, 'epoch', 4) == _log_column(reference, 'epoch', 4)


def test_training_changed_the_model_and_resume_of_a_finished_run_is_a_no_op(
        tiny_world, reference_run, isolated_torch):
    final = load_checkpoint(latest_checkpoint(reference_run))
    torch.manual_seed(0)
    initial = build_model(load_config('tiny_test').model).state_dict()
    changed = [name for name, tensor in final['model'].items()
               if not torch.equal(tensor, initial[name])]
    assert any(name.startswith('backbone.') for name in changed)
    assert any(name.startswith('transformer_rot.') for name in changed)
    before = sorted(path.name for path in reference_run.iterdir())
    result = train(load_config('tiny_test'), reference_run, tiny_world, resume='auto')
    assert result.global_step == TOTAL_STEPS
    assert sorted(path.name for path in reference_run.iterdir()) == before


def test_feature_cache_equals_live_features(tiny_world, tmp_path, monkeypatch):
    cfg = load_config('tiny_test', ['model.freeze_backbone=true',
                                    'augmentation.enabled=false'])
    torch.manual_seed(0)
    model = build_model(cfg.model).eval()
    dataset = build_dataset(read_split(cfg.data, 'train', tiny_world))
    transform = eval_transform(cfg.augmentation)
    cache = load_or_compute(model, dataset, transform, torch.device('cpu'), tmp_path,
                            batch_size=5, progress=False)
    assert len(cache) == len(dataset) == 18
    picks = [0, 13, 17]
    images = torch.stack([transform(load_rgb(dataset.samples[i])) for i in picks])
    with torch.no_grad():
        live_t, live_rot = model.forward_features(images)
        torch.testing.assert_close(cache.feat_t[picks], live_t, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(cache.feat_rot[picks], live_rot, rtol=1e-5, atol=1e-5)
        cached_out = model.forward_from_features(cache.feat_t[picks], cache.feat_rot[picks])
        live_out = model(images)
    for key in ('position', 'orientation', 'scene_log_probs'):
        torch.testing.assert_close(cached_out[key], live_out[key], rtol=1e-4, atol=1e-5)
    item = CachedFeatureDataset(cache, dataset)[(13, 99)]
    assert item['scene'].item() == dataset.scene_of[13]
    assert torch.equal(item['feat_t'], cache.feat_t[13])

    def must_not_compute(*args, **kwargs):
        """Fail: the cache file should have been read instead."""
        raise AssertionError('the on-disk cache should have been reused')

    monkeypatch.setattr(feature_cache, 'compute_features', must_not_compute)
    reused = load_or_compute(model, dataset, transform, torch.device('cpu'), tmp_path,
                             progress=False)
    assert reused.key == cache.key and torch.equal(reused.feat_t, cache.feat_t)
    # Other backbone weights must not reuse the file.
    with torch.no_grad():
        next(model.backbone.parameters()).add_(0.01)
    with pytest.raises(AssertionError, match='should have been reused'):
        load_or_compute(model, dataset, transform, torch.device('cpu'), tmp_path,
                        progress=False)


def test_finetune_trains_only_the_position_head(tiny_world, reference_run, tmp_path,
                                                isolated_torch):
    cfg = load_config('tiny_test', [
        'freeze.trainable=[regressor_head_t]', f'checkpoint.init_from={reference_run}',
        'loss.learnable=false', 'loss.s_x=1.0', 'loss.s_q=0.0', 'schedule.epochs=1'])
    result = train(cfg, tmp_path / 'finetune', tiny_world)
    before = load_checkpoint(latest_checkpoint(reference_run))['model']
    after = load_checkpoint(result.checkpoint)['model']
    for name, tensor in before.items():
        if name.startswith('regressor_head_t.'):
            assert not torch.equal(after[name], tensor), name
        else:  # BatchNorm statistics included: frozen modules run in eval mode
            assert torch.equal(after[name], tensor), name
    with pytest.raises(ConfigError, match="'regressor_head' names no module"):
        train(load_config('tiny_test', ['freeze.trainable=[regressor_head]']),
              tmp_path / 'typo', tiny_world)


def test_runs_refuse_to_mix_and_check_the_scene_count(tiny_world, reference_run, tmp_path):
    with pytest.raises(ConfigError, match='already holds checkpoints.*--resume.*--overwrite'):
        train(load_config('tiny_test'), reference_run, tiny_world)
    with pytest.raises(ConfigError, match=r'tiny_test\.yaml: model\.num_scenes is 4 but the '
                                          r"train split has 3 scenes \['atrium'"):
        train(load_config('tiny_test', ['model.num_scenes=4']), tmp_path, tiny_world)
