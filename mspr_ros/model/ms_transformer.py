"""The multi-scene pose transformer (MS-Transformer with the NeurIPS 2024 fixes).

Tensor flow (docs/paper.md section 1.1): backbone -> optional average pooling -> 1x1 projections
to ``d`` -> shared positional encoding -> position and orientation transformers -> scene
classifier over the S decoded scene latents -> selected scene's latent -> shared pose heads.
"""
import torch
from torch import nn
import torch.nn.functional as F

from mspr_ros.model.backbone import build_backbone, ORIENTATION_CHANNELS, POSITION_CHANNELS
from mspr_ros.model.config import ModelConfig
from mspr_ros.model.position_encoding import build_position_encoding
from mspr_ros.model.transformer import SceneTransformer


def _regression_head(d_model: int, hidden: int, out_features: int) -> nn.Sequential:
    """Return Linear -> GELU -> Linear with xavier-uniform weights."""
    head = nn.Sequential(nn.Linear(d_model, hidden), nn.GELU(), nn.Linear(hidden, out_features))
    for layer in (head[0], head[2]):
        nn.init.xavier_uniform_(layer.weight)
    return head


class MSTransformer(nn.Module):
    """Multi-scene absolute pose regressor.

    Outputs of :meth:`forward` (a dict):
        ``position`` B x 3, ``orientation`` B x 4 (xyzw quaternion, not normalised),
        ``scene_log_probs`` B x S, ``scene`` B (long: the scene whose latent produced the pose),
        and, only with ``need_qka=True``, ``qka_t`` and ``qka_rot`` (scalar tensors).
    """

    def __init__(self, cfg: ModelConfig) -> None:
        """Build every part from ``cfg`` (loads backbone weights as ``cfg`` says)."""
        super().__init__()
        self.config = cfg
        d_model = cfg.hidden_dim
        self.backbone = build_backbone(cfg)
        self.input_proj_t = nn.Conv2d(POSITION_CHANNELS, d_model, kernel_size=1)
        self.input_proj_rot = nn.Conv2d(ORIENTATION_CHANNELS, d_model, kernel_size=1)
        self.position_encoding = build_position_encoding(cfg)
        common = dict(num_scenes=cfg.num_scenes, d_model=d_model, nheads=cfg.nheads,
                      dim_feedforward=cfg.dim_feedforward, dropout=cfg.dropout)
        self.transformer_t = SceneTransformer(enc_layers=cfg.enc_layers_t,
                                              dec_layers=cfg.dec_layers_t, **common)
        self.transformer_rot = SceneTransformer(enc_layers=cfg.enc_layers_rot,
                                                dec_layers=cfg.dec_layers_rot, **common)
        self.scene_embed = nn.Linear(2 * d_model, 1)
        self.regressor_head_t = _regression_head(d_model, cfg.head_hidden, 3)
        self.regressor_head_rot = _regression_head(d_model, cfg.head_hidden, 4)
        if cfg.freeze_backbone:
            self.backbone.requires_grad_(False)
            self.backbone.eval()

    def train(self, mode: bool = True) -> 'MSTransformer':
        """Set train/eval mode; a frozen backbone always stays in eval mode."""
        super().train(mode)
        if self.config.freeze_backbone:
            # Frozen BatchNorm statistics and no drop-path keep cached maps equal to live ones.
            self.backbone.eval()
        return self

    def forward_features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return backbone maps after pooling, before projection.

        Args:
            images: ImageNet-normalised ``B x 3 x H x W``.

        Returns:
            ``(feat_t B x 112 x H/(16p) x W/(16p), feat_rot B x 40 x H/(8p) x W/(8p))`` where
            ``p = config.feature_pool``.
        """
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f'images must be B x 3 x H x W, got {tuple(images.shape)}')
        feat_t, feat_rot = self.backbone(images)
        pool = self.config.feature_pool
        if pool > 1:
            feat_t = F.avg_pool2d(feat_t, pool)
            feat_rot = F.avg_pool2d(feat_rot, pool)
        return feat_t, feat_rot

    def forward_from_features(self, feat_t: torch.Tensor, feat_rot: torch.Tensor,
                              scene: torch.Tensor | None = None,
                              need_qka: bool = False) -> dict[str, torch.Tensor]:
        """Run everything after the backbone; inputs as returned by :meth:`forward_features`.

        Args:
            feat_t: position map ``B x 112 x Ht x Wt``.
            feat_rot: orientation map ``B x 40 x Hr x Wr``.
            scene: optional ground-truth scene indices ``B`` (long) selecting the latents;
                None selects the most probable scene.
            need_qka: also return the QKA losses ``qka_t`` and ``qka_rot``.

        Returns:
            The output dict described in the class docstring.
        """
        src_t = self.input_proj_t(feat_t)
        src_rot = self.input_proj_rot(feat_rot)
        latents_t, qka_t = self.transformer_t(src_t, self.position_encoding(src_t), need_qka)
        latents_rot, qka_rot = self.transformer_rot(src_rot, self.position_encoding(src_rot),
                                                    need_qka)
        scene_logits = self.scene_embed(torch.cat([latents_t, latents_rot], dim=-1)).squeeze(-1)
        scene_log_probs = F.log_softmax(scene_logits, dim=1)  # B x S
        if scene is None:
            scene = scene_log_probs.argmax(dim=1)
        else:
            scene = self._check_scene(scene, scene_log_probs.shape[0])
        rows = torch.arange(scene.shape[0], device=scene.device)
        outputs = {
            'position': self.regressor_head_t(latents_t[rows, scene]),
            'orientation': self.regressor_head_rot(latents_rot[rows, scene]),
            'scene_log_probs': scene_log_probs,
            'scene': scene,
        }
        if need_qka:
            outputs['qka_t'] = qka_t
            outputs['qka_rot'] = qka_rot
        return outputs

    def _check_scene(self, scene: torch.Tensor, batch: int) -> torch.Tensor:
        """Validate ground-truth scene indices; an out-of-range index is a data bug."""
        if not isinstance(scene, torch.Tensor) or scene.shape != (batch,) \
                or scene.dtype != torch.long:
            shape = tuple(scene.shape) if isinstance(scene, torch.Tensor) else type(scene)
            raise ValueError(f'scene must be a long tensor of shape ({batch},), got {shape}')
        num_scenes = self.config.num_scenes
        if bool((scene < 0).any()) or bool((scene >= num_scenes).any()):
            raise ValueError(f'scene indices must lie in [0, {num_scenes}), got '
                             f'{scene.tolist()}')
        return scene

    def forward(self, images: torch.Tensor, scene: torch.Tensor | None = None,
                need_qka: bool = False) -> dict[str, torch.Tensor]:
        """Regress poses for ImageNet-normalised images ``B x 3 x H x W``.

        See :meth:`forward_from_features` for ``scene``/``need_qka`` and the class docstring
        for the returned dict.
        """
        feat_t, feat_rot = self.forward_features(images)
        return self.forward_from_features(feat_t, feat_rot, scene=scene, need_qka=need_qka)


def build_model(cfg: ModelConfig) -> MSTransformer:
    """Return a new :class:`MSTransformer` configured by ``cfg``."""
    return MSTransformer(cfg)
