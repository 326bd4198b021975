"""Training losses: weighted pose loss, scene NLL and the QKA auxiliary term (paper.md 2, 3.1).

Quaternions here are compared after normalisation, without q/-q sign handling, exactly as the
reference training did; both tensors must use the same component order (ours: xyzw).
"""
from dataclasses import dataclass

import torch
from torch import nn
import torch.nn.functional as F


@dataclass(frozen=True)
class PoseLossPreset:
    """Initial weighting of the pose loss for one dataset/phase."""

    learnable: bool
    s_x: float
    s_q: float


POSE_LOSS_PRESETS = {
    '7scenes': PoseLossPreset(learnable=True, s_x=0.0, s_q=-3.0),
    'cambridge': PoseLossPreset(learnable=True, s_x=-3.0, s_q=-6.5),
    # Cambridge fine-tune phase: position loss only.
    'cambridge_finetune': PoseLossPreset(learnable=False, s_x=1.0, s_q=0.0),
}


class PoseLoss(nn.Module):
    """Position + orientation loss with learned (Kendall) or fixed weights.

    ``l_x = mean_b ||x_gt - x||``, ``l_q = mean_b ||q_gt/|q_gt| - q/|q| ||``.
    Learnable: ``l_x exp(-s_x) + s_x + l_q exp(-s_q) + s_q`` (s_x, s_q are parameters);
    fixed: ``s_x l_x + s_q l_q``.
    """

    def __init__(self, learnable: bool = True, s_x: float = 0.0, s_q: float = -3.0) -> None:
        """Create the loss with initial weights ``s_x``, ``s_q``."""
        super().__init__()
        self.learnable = learnable
        self.s_x = nn.Parameter(torch.tensor(float(s_x)), requires_grad=learnable)
        self.s_q = nn.Parameter(torch.tensor(float(s_q)), requires_grad=learnable)

    @classmethod
    def from_preset(cls, name: str) -> 'PoseLoss':
        """Return the loss initialised from :data:`POSE_LOSS_PRESETS` ``[name]``."""
        if name not in POSE_LOSS_PRESETS:
            raise ValueError(f'unknown pose loss preset {name!r}; choose one of '
                             f'{sorted(POSE_LOSS_PRESETS)}')
        preset = POSE_LOSS_PRESETS[name]
        return cls(preset.learnable, preset.s_x, preset.s_q)

    def forward(self, position: torch.Tensor, orientation: torch.Tensor,
                position_gt: torch.Tensor, orientation_gt: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return ``(weighted loss, l_x, l_q)`` for ``B x 3`` positions, ``B x 4`` quaternions."""
        for name, value, width in (('position', position, 3), ('orientation', orientation, 4),
                                   ('position_gt', position_gt, 3),
                                   ('orientation_gt', orientation_gt, 4)):
            if value.dim() != 2 or value.shape[1] != width:
                raise ValueError(f'{name} must be B x {width}, got {tuple(value.shape)}')
        position_error = (position_gt - position).norm(dim=1).mean()
        orientation_error = (F.normalize(orientation_gt, dim=1)
                             - F.normalize(orientation, dim=1)).norm(dim=1).mean()
        if self.learnable:
            loss = (position_error * torch.exp(-self.s_x) + self.s_x
                    + orientation_error * torch.exp(-self.s_q) + self.s_q)
        else:
            loss = self.s_x * position_error + self.s_q * orientation_error
        return loss, position_error, orientation_error


class MultiScenePoseCriterion(nn.Module):
    """Total loss ``pose + NLL(scene) + lambda_aux (qka_t + qka_rot)``.

    Returns a dict of scalar tensors: ``loss`` (to optimise), ``pose``, ``position`` (l_x),
    ``orientation`` (l_q), ``scene_nll`` and, whenever the model outputs carry QKA values,
    ``qka`` (``qka_t + qka_rot``, unweighted). With ``lambda_aux == 0`` the QKA term is not part
    of ``loss``; with ``lambda_aux > 0`` the outputs must come from ``need_qka=True``.
    """

    def __init__(self, pose_loss: PoseLoss, lambda_aux: float = 0.1) -> None:
        """Combine ``pose_loss`` with the scene and QKA terms."""
        super().__init__()
        if lambda_aux < 0:
            raise ValueError(f'lambda_aux must be >= 0, got {lambda_aux}')
        self.pose_loss = pose_loss
        self.lambda_aux = float(lambda_aux)

    def forward(self, outputs: dict[str, torch.Tensor],
                targets: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Compute the losses.

        Args:
            outputs: model outputs (``position``, ``orientation``, ``scene_log_probs`` and
                optionally ``qka_t``, ``qka_rot``).
            targets: ``position`` B x 3, ``orientation`` B x 4 (xyzw), ``scene`` B (long).
        """
        missing = [k for k in ('position', 'orientation', 'scene') if k not in targets]
        if missing:
            raise ValueError(f'targets lack {missing}')
        pose, position_error, orientation_error = self.pose_loss(
            outputs['position'], outputs['orientation'], targets['position'],
            targets['orientation'])
        scene_nll = F.nll_loss(outputs['scene_log_probs'], targets['scene'])
        losses = {'pose': pose, 'position': position_error, 'orientation': orientation_error,
                  'scene_nll': scene_nll}
        total = pose + scene_nll
        has_qka = 'qka_t' in outputs and 'qka_rot' in outputs
        if self.lambda_aux > 0 and not has_qka:
            raise ValueError('lambda_aux > 0 needs model outputs computed with need_qka=True')
        if has_qka:
            losses['qka'] = outputs['qka_t'] + outputs['qka_rot']
            if self.lambda_aux > 0:
                total = total + self.lambda_aux * losses['qka']
        losses['loss'] = total
        return losses
