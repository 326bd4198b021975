"""The training and evaluation loops: plain functions of model, criterion, data and optimizer.

Batches are dicts from ``mspr_training.transforms.SeededDraws`` (``image B x 3 x H x W``) or
``mspr_training.feature_cache.CachedFeatureDataset`` (``feat_t``, ``feat_rot``), each with
``position B x 3``, ``orientation B x 4`` (xyzw), ``scene B`` (long) and ``index B``.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field
import time
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import nn

# Loss terms summed per epoch (weighted by batch size) and logged.
LOSS_KEYS = ('loss', 'pose', 'position', 'orientation', 'scene_nll', 'qka')


class TrainStep(nn.Module):
    """Model and criterion as one module: ``forward(batch) -> loss dict``.

    Wrapping both lets DistributedDataParallel synchronise the criterion's learnable loss
    weights (s_x, s_q) with the model's gradients, and lets one forward serve image batches and
    cached-feature batches (DDP only syncs what runs through its own forward).
    """

    def __init__(self, model: nn.Module, criterion: nn.Module, need_qka: bool) -> None:
        """Combine ``model`` (MSTransformer) and ``criterion`` (MultiScenePoseCriterion)."""
        super().__init__()
        self.model = model
        self.criterion = criterion
        self.need_qka = need_qka

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Return the criterion's dict (``loss`` and its terms) for a training batch.

        The ground-truth scene selects the decoded latents (teacher forcing, as the papers).
        """
        outputs = run_model(self.model, batch, scene=batch['scene'], need_qka=self.need_qka)
        return self.criterion(outputs, batch)


def run_model(model: nn.Module, batch: dict[str, torch.Tensor], scene: torch.Tensor | None,
              need_qka: bool = False) -> dict[str, torch.Tensor]:
    """Run ``model`` on an image batch or a cached-feature batch."""
    if 'feat_t' in batch:
        return model.forward_from_features(batch['feat_t'], batch['feat_rot'], scene=scene,
                                           need_qka=need_qka)
    return model(batch['image'], scene=scene, need_qka=need_qka)


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Move the tensors of ``batch`` to ``device`` (non-blocking from pinned memory)."""
    return {key: value.to(device, non_blocking=True) if isinstance(value, torch.Tensor)
            else value for key, value in batch.items()}


@dataclass
class IterationInfo:
    """What the per-iteration hook sees after an optimizer step.

    Attributes:
        epoch: 0-based epoch.
        iteration: batches of this epoch done (1-based count).
        iterations: batches of the whole epoch for this process.
        losses: this process's loss terms of the batch.
        batch_size: images in this process's batch.
        images_per_s: this process's throughput over the iteration.
        batch: the batch just trained on (on the device), for diagnostics.
    """

    epoch: int
    iteration: int
    iterations: int
    losses: dict[str, float]
    batch_size: int
    images_per_s: float
    batch: dict[str, Any] | None = None


@dataclass
class EpochTotals:
    """Loss sums of an epoch weighted by batch size, so means are exact over processes."""

    sums: dict[str, float] = field(default_factory=lambda: dict.fromkeys(LOSS_KEYS, 0.0))
    images: int = 0

    def add(self, losses: dict[str, float], batch_size: int) -> None:
        """Accumulate one batch."""
        for key in LOSS_KEYS:
            self.sums[key] += losses.get(key, 0.0) * batch_size
        self.images += batch_size

    def as_tensor(self, device: torch.device) -> torch.Tensor:
        """Return ``[sums..., images]`` as float64 (for all-reduce and checkpoints)."""
        return torch.tensor([self.sums[k] for k in LOSS_KEYS] + [float(self.images)],
                            dtype=torch.float64, device=device)

    @classmethod
    def from_tensor(cls, values: torch.Tensor) -> 'EpochTotals':
        """Inverse of :meth:`as_tensor`."""
        values = values.detach().cpu().tolist()
        return cls(dict(zip(LOSS_KEYS, values[:-1])), int(round(values[-1])))

    def means(self) -> dict[str, float]:
        """Return the per-image mean of every term (NaN before the first batch)."""
        if self.images == 0:
            return {key: float('nan') for key in LOSS_KEYS}
        return {key: value / self.images for key, value in self.sums.items()}


def _losses_as_floats(losses: dict[str, torch.Tensor]) -> dict[str, float]:
    """Return the scalar loss terms as Python floats."""
    return {key: float(value.detach()) for key, value in losses.items()
            if isinstance(value, torch.Tensor) and value.numel() == 1}


def train_one_epoch(step: nn.Module, loader: Iterable[dict[str, Any]],
                    optimizer: torch.optim.Optimizer, *, device: torch.device, epoch: int,
                    iterations: int, start_iteration: int = 0,
                    totals: EpochTotals | None = None,
                    scaler: torch.amp.GradScaler | None = None, amp: bool = False,
                    on_iteration: Callable[[IterationInfo, EpochTotals], None] | None = None,
                    progress: Any = None) -> EpochTotals:
    """Train over ``loader`` (the rest of one epoch) and return the epoch's loss totals.

    Args:
        step: a :class:`TrainStep` (possibly wrapped in DistributedDataParallel), in the train
            mode the caller chose (frozen parts may be in eval mode).
        loader: batches of the epoch from ``start_iteration`` on.
        optimizer: steps once per batch.
        device: where the batches go.
        epoch: 0-based epoch (for the hook).
        iterations: batches of the whole epoch for this process.
        start_iteration: batches of this epoch already done (a resumed epoch).
        totals: the totals of those done batches (resumed from a checkpoint).
        scaler: GradScaler for float16 autocast (None or disabled on the CPU).
        amp: run the forward pass under CUDA float16 autocast.
        on_iteration: called after every optimizer step with the iteration and the totals.
        progress: a tqdm bar to advance and annotate, or None.
    """
    totals = totals if totals is not None else EpochTotals()
    iteration = start_iteration
    started = time.perf_counter()
    for batch in loader:
        batch = to_device(batch, device)
        autocast = (torch.autocast(device_type='cuda', dtype=torch.float16) if amp
                    else nullcontext())
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            losses = step(batch)
        loss = losses['loss']
        if scaler is not None and scaler.is_enabled():
            # float16 overflow: GradScaler skips the step and lowers its scale by itself.
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            if not torch.isfinite(loss):
                raise FloatingPointError(f'epoch {epoch} iteration {iteration + 1}: loss is '
                                         f'{float(loss)}; terms {_losses_as_floats(losses)}')
            loss.backward()
            optimizer.step()
        iteration += 1
        batch_size = int(batch['position'].shape[0])
        values = _losses_as_floats(losses)
        totals.add(values, batch_size)
        now = time.perf_counter()
        info = IterationInfo(epoch=epoch, iteration=iteration, iterations=iterations,
                             losses=values, batch_size=batch_size,
                             images_per_s=batch_size / max(now - started, 1e-9),
                             batch=batch)
        started = now
        if progress is not None:
            progress.update(1)
            progress.set_postfix(loss=f'{values["loss"]:.4f}',
                                 lr=f'{optimizer.param_groups[0]["lr"]:.2e}',
                                 img_s=f'{info.images_per_s:.1f}', refresh=False)
        if on_iteration is not None:
            on_iteration(info, totals)
    return totals


@dataclass
class Predictions:
    """Model outputs and ground truth of an evaluation, in loader order (numpy arrays).

    Attributes:
        index: dataset index (N,).
        gt_scene, pred_scene: int64 (N,).
        gt_position, pred_position: float64 (N, 3).
        gt_orientation: float64 (N, 4) xyzw; ``pred_orientation`` (N, 4) as regressed.
        scene_probabilities: float64 (N, S) softmax of the scene classifier.
    """

    index: np.ndarray
    gt_scene: np.ndarray
    pred_scene: np.ndarray
    gt_position: np.ndarray
    pred_position: np.ndarray
    gt_orientation: np.ndarray
    pred_orientation: np.ndarray
    scene_probabilities: np.ndarray


@torch.inference_mode()
def evaluate(model: nn.Module, loader: Iterable[dict[str, Any]], device: torch.device,
             amp: bool = False) -> Predictions:
    """Predict every batch of ``loader`` with the predicted scene (as the papers' test).

    The model is put in eval mode for the loop and returned to its previous mode after.
    """
    was_training = model.training
    model.eval()
    parts: dict[str, list[np.ndarray]] = {name: [] for name in Predictions.__annotations__}
    try:
        for batch in loader:
            batch = to_device(batch, device)
            autocast = (torch.autocast(device_type='cuda', dtype=torch.float16) if amp
                        else nullcontext())
            with autocast:
                outputs = run_model(model, batch, scene=None)
            parts['index'].append(torch.as_tensor(batch['index']).cpu().numpy())
            parts['gt_scene'].append(batch['scene'].cpu().numpy())
            parts['pred_scene'].append(outputs['scene'].cpu().numpy())
            parts['gt_position'].append(batch['position'].double().cpu().numpy())
            parts['pred_position'].append(outputs['position'].double().cpu().numpy())
            parts['gt_orientation'].append(batch['orientation'].double().cpu().numpy())
            parts['pred_orientation'].append(outputs['orientation'].double().cpu().numpy())
            parts['scene_probabilities'].append(
                outputs['scene_log_probs'].double().exp().cpu().numpy())
    finally:
        model.train(was_training)
    if not parts['index']:
        raise ValueError('evaluation loader yielded no batch')
    return Predictions(**{name: np.concatenate(values) for name, values in parts.items()})
