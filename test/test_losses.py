"""Tests of the pose loss, its presets and the multi-scene criterion."""
import math

import pytest
import torch

from mspr_ros.model.losses import MultiScenePoseCriterion, POSE_LOSS_PRESETS, PoseLoss


def example_batch():
    """Return predictions and targets whose errors are easy to compute by hand."""
    position = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    position_gt = torch.tensor([[3.0, 4.0, 0.0], [1.0, 1.0, 2.0]])  # errors 5 and 1
    orientation = torch.tensor([[0.0, 0.0, 0.0, 2.0], [0.0, 0.0, 0.0, 1.0]])
    orientation_gt = torch.tensor([[0.0, 0.0, 0.0, 1.0], [3.0, 0.0, 0.0, 0.0]])
    # Normalised differences: 0 and |(1, 0, 0, -1)| = sqrt(2).
    return position, orientation, position_gt, orientation_gt


def test_learnable_pose_loss_formula_and_gradients():
    """l_x exp(-s_x) + s_x + l_q exp(-s_q) + s_q; s_x and s_q receive gradients."""
    loss_fn = PoseLoss(learnable=True, s_x=-3.0, s_q=-6.5)
    loss, l_x, l_q = loss_fn(*example_batch())
    assert l_x.item() == pytest.approx(3.0)
    assert l_q.item() == pytest.approx(math.sqrt(2) / 2)
    expected = 3.0 * math.exp(3.0) - 3.0 + math.sqrt(2) / 2 * math.exp(6.5) - 6.5
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert loss_fn.s_x.grad.item() == pytest.approx(1 - 3.0 * math.exp(3.0), rel=1e-6)
    assert loss_fn.s_q.grad.item() == pytest.approx(1 - math.sqrt(2) / 2 * math.exp(6.5),
                                                    rel=1e-6)


def test_fixed_pose_loss_and_presets():
    """Fixed weights give s_x l_x + s_q l_q without trainable weights; presets match paper."""
    loss_fn = PoseLoss.from_preset('cambridge_finetune')
    loss, l_x, _ = loss_fn(*example_batch())
    assert loss.item() == pytest.approx(l_x.item())
    assert not loss_fn.s_x.requires_grad and not loss_fn.s_q.requires_grad
    assert (POSE_LOSS_PRESETS['7scenes'].s_x, POSE_LOSS_PRESETS['7scenes'].s_q) == (0.0, -3.0)
    cambridge = PoseLoss.from_preset('cambridge')
    assert (cambridge.s_x.item(), cambridge.s_q.item()) == (-3.0, -6.5)
    with pytest.raises(ValueError, match='unknown pose loss preset'):
        PoseLoss.from_preset('tum')


def test_criterion_total_includes_scene_nll_and_weighted_qka():
    """Loss = pose + NLL + lambda (qka_t + qka_rot); lambda 0 drops the QKA term."""
    position, orientation, position_gt, orientation_gt = example_batch()
    log_probs = torch.log(torch.tensor([[0.5, 0.25, 0.25], [0.1, 0.1, 0.8]]))
    outputs = {'position': position, 'orientation': orientation, 'scene_log_probs': log_probs,
               'qka_t': torch.tensor(2.0), 'qka_rot': torch.tensor(3.0)}
    targets = {'position': position_gt, 'orientation': orientation_gt,
               'scene': torch.tensor([0, 2])}
    pose_loss = PoseLoss(learnable=True, s_x=0.0, s_q=0.0)
    result = MultiScenePoseCriterion(pose_loss, lambda_aux=0.1)(outputs, targets)
    nll = -(math.log(0.5) + math.log(0.8)) / 2
    assert result['scene_nll'].item() == pytest.approx(nll)
    assert result['qka'].item() == pytest.approx(5.0)
    assert result['loss'].item() == pytest.approx(result['pose'].item() + nll + 0.5)
    without = MultiScenePoseCriterion(pose_loss, lambda_aux=0.0)(outputs, targets)
    assert without['loss'].item() == pytest.approx(result['pose'].item() + nll)
    no_qka_outputs = {k: v for k, v in outputs.items() if not k.startswith('qka')}
    assert 'qka' not in MultiScenePoseCriterion(pose_loss, 0.0)(no_qka_outputs, targets)
    with pytest.raises(ValueError, match='need_qka=True'):
        MultiScenePoseCriterion(pose_loss, 0.1)(no_qka_outputs, targets)
