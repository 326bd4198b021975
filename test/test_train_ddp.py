"""Two-process CPU data-parallel training (torchrun, gloo) against one process."""
import csv
from dataclasses import replace
import os
from pathlib import Path
import subprocess
import sys

import pytest
import torch

from mspr_ros.model.ms_transformer import build_model
from mspr_training.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint
from mspr_training.config import load_config
from mspr_training.train import train

# Same global batch (4 = 2 processes x 2), dropout off and a frozen backbone in eval mode
# (BatchNorm statistics fixed): the two runs compute the same gradients up to float rounding.
OVERRIDES = ['model.dropout=0.0', 'model.freeze_backbone=true', 'augmentation.enabled=false',
             'feature_cache.mode=on', 'schedule.epochs=1', 'optim.batch_size=4']
TIMEOUT_S = 300
# RMS gradient (Adam's sqrt(v)) below which a parameter entry got no gradient signal.
GRADIENT_SIGNAL = 1e-6


def _trainable_names(cfg) -> list[str]:
    """Return the trainable parameter names in optimizer order (model built on 'meta')."""
    with torch.device('meta'):
        model = build_model(replace(cfg.model, backbone_weights=None))
    return [name for name, p in model.named_parameters() if p.requires_grad]


def _epoch_row(run: Path) -> dict[str, str]:
    with (run / 'log.csv').open(newline='') as stream:
        rows = [row for row in csv.DictReader(stream) if row['kind'] == 'epoch']
    assert len(rows) == 1
    return rows[0]


def test_two_process_torchrun_matches_one_process(tiny_world, tmp_path, isolated_torch):
    single = tmp_path / 'single'
    train(load_config('tiny_test', OVERRIDES), single, tiny_world)

    parallel = tmp_path / 'ddp'
    command = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2',
               '--standalone', '-m', 'mspr_training.train', '--config', 'tiny_test.yaml',
               '--data-root', str(tiny_world), '--out', str(parallel)]
    for override in OVERRIDES:
        command += ['--set', override]
    result = subprocess.run(command, env={**os.environ, 'OMP_NUM_THREADS': '1'}, text=True,
                            capture_output=True, timeout=TIMEOUT_S)
    assert result.returncode == 0, result.stderr[-4000:]

    expected = load_checkpoint(latest_checkpoint(single))
    actual = load_checkpoint(latest_checkpoint(parallel))
    assert len(actual['per_rank']) == 2 and len(expected['per_rank']) == 1
    assert actual['progress'] == expected['progress']  # same number of global steps
    assert [p.name for p in list_checkpoints(parallel)] == [
        p.name for p in list_checkpoints(single)]
    for key in ('loss', 'position', 'orientation', 'scene_nll', 'qka'):
        assert float(_epoch_row(parallel)[key]) == pytest.approx(
            float(_epoch_row(single)[key]), rel=1e-4), key
    # Compare every parameter entry that received a gradient. Some entries get none by
    # construction (decoder layer 0 attends over identical zero targets; a bias shared by all
    # scene logits cancels in the softmax): Adam turns their rounding-level gradients into
    # +-lr steps whose sign differs between any two reduction orders, so they carry no signal.
    # Their share is checked to be small.
    names = _trainable_names(load_config('tiny_test', OVERRIDES))
    moments = expected['optimizer']['state']
    assert len(moments) == len(names) + 2  # + the loss weights s_x, s_q
    silent = total = 0
    for index, name in enumerate(names):
        has_signal = moments[index]['exp_avg_sq'].sqrt() > GRADIENT_SIGNAL
        silent += int((~has_signal).sum())
        total += has_signal.numel()
        torch.testing.assert_close(actual['model'][name][has_signal],
                                   expected['model'][name][has_signal],
                                   rtol=1e-4, atol=1e-5, msg=name)
    assert silent < 0.1 * total
    for name, tensor in expected['model'].items():  # buffers: frozen BatchNorm statistics
        if name not in names:
            assert torch.equal(actual['model'][name], tensor), name
    for name in ('pose_loss.s_x', 'pose_loss.s_q'):
        torch.testing.assert_close(actual['criterion'][name], expected['criterion'][name])
    # The learned loss weights moved from their initial values (0, -3): they were trained.
    assert float(actual['criterion']['pose_loss.s_x']) != 0.0
    assert float(actual['criterion']['pose_loss.s_q']) != -3.0
