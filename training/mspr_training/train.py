"""``mspr-train``: set up data, model, optimizer, checkpoints and processes, then run the epochs.

    mspr-train --config synth_demo.yaml --data-root DIR --out RUN_DIR [--set key.sub=value]
    mspr-train --config ... --out RUN_DIR --resume            # continue after a kill
    torchrun --nproc_per_node 4 -m mspr_training.train --config ... --out RUN_DIR

The loop bodies live in :mod:`mspr_training.engine`. Resume is exact: a checkpoint holds the
model, optimizer, scheduler, GradScaler, sampler and RNG states and the position inside the
epoch; the resumed run skips the batches already consumed (the epoch order is a function of
seed and epoch) and reaches the same parameters as an uninterrupted run.

With ``data.calibration_split: crossfit`` (:mod:`mspr_training.crossfit`) the deployed run
trains on every training sequence, then the ``data.calibration_folds`` fold runs train in
``RUN_DIR/crossfit/fold_<k>`` (``--no-crossfit-folds`` skips them); ``--resume`` continues
the deployed run, then each fold run, wherever they stopped. Their wall-clock times go to
``RUN_DIR/crossfit/timing.json``.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
from dataclasses import dataclass
import logging
import math
import os
from pathlib import Path
import random
import shutil
import sys
import time
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from mspr_ros.bundle import load_bundle
from mspr_ros.device import resolve_device
from mspr_ros.model.attention_stats import encoder_head_stats
from mspr_ros.model.backbone import BackboneWeightsError
from mspr_ros.model.losses import MultiScenePoseCriterion, PoseLoss
from mspr_ros.model.ms_transformer import build_model, MSTransformer
from mspr_ros.runtime import allocator
from mspr_training import checkpoint as ckpt
from mspr_training import distributed
from mspr_training.config import (ConfigError, CROSSFIT_SPLIT, dump_config, load_config,
                                  TrainConfig)
from mspr_training.crossfit import (FeatureSource, fold_config, fold_dir, timed_fit,
                                    TrainingTime)
from mspr_training.data import DatasetError, MultiSceneDataset
from mspr_training.datasets import (build_dataset, data_fingerprint, data_root,
                                    read_crossfit_folds, read_split, training_poses)
from mspr_training.engine import EpochTotals, evaluate, IterationInfo, LOSS_KEYS, \
    Predictions, run_model, train_one_epoch, TrainStep
from mspr_training.feature_cache import AugmentedViews, CachedFeatureDataset, load_or_compute
from mspr_training.metrics import compute_metrics, MetricsReport, NaiveBaseline
from mspr_training.sampler import build_sampler
from mspr_training.training_camera import training_cameras
from mspr_training.transforms import eval_transform, SeededDraws, train_transform

LOGGER = logging.getLogger('mspr_training.train')
ATTENTION_COLUMNS = ('epoch', 'step', 'branch', 'layer', 'head', 'centroid_distance', 'entropy')
# Images of a logged batch the attention diagnostics look at (bounds their cost).
ATTENTION_IMAGES = 4
CSV_COLUMNS = ('kind', 'epoch', 'step', 'lr', *LOSS_KEYS, 's_x', 's_q', 'images_per_s',
               'val_median_position_m', 'val_median_orientation_deg', 'val_scene_accuracy',
               'wall_time')
EVAL_BATCH_SIZE = 32


# ---------------------------------------------------------------------------------------------
# Model set-up helpers
# ---------------------------------------------------------------------------------------------

def build_criterion(cfg: TrainConfig) -> MultiScenePoseCriterion:
    """Return the paper's criterion with the config's loss weights."""
    pose_loss = PoseLoss(learnable=cfg.loss.learnable, s_x=cfg.loss.s_x, s_q=cfg.loss.s_q)
    return MultiScenePoseCriterion(pose_loss, lambda_aux=cfg.loss.lambda_aux)


def _in_module(name: str, prefix: str) -> bool:
    """Return True when parameter ``name`` lies in the module (or is the parameter) ``prefix``."""
    return name == prefix or name.startswith(prefix + '.')


def freeze_parameters(model: nn.Module, trainable: Sequence[str] | None) -> list[str]:
    """Keep gradients only for the parameters inside the modules named in ``trainable``.

    ``trainable`` holds dotted module paths (``regressor_head_t``, ``transformer_t.decoder``).
    Returns the names of the parameters left trainable. With ``trainable`` None nothing
    changes (a frozen backbone stays frozen).

    Raises:
        ConfigError: a path that matches no parameter (a typo would freeze everything).
    """
    if trainable is not None:
        names = [name for name, _ in model.named_parameters()]
        for prefix in trainable:
            if not any(_in_module(name, prefix) for name in names):
                raise ConfigError(f'freeze.trainable: {prefix!r} names no module or parameter '
                                  f'of the model (top-level modules: '
                                  f'{sorted({n.split(".")[0] for n in names})})')
        for name, parameter in model.named_parameters():
            if not any(_in_module(name, prefix) for prefix in trainable):
                parameter.requires_grad_(False)
    return [name for name, p in model.named_parameters() if p.requires_grad]


def set_train_mode(model: nn.Module, frozen_eval: bool) -> None:
    """Put ``model`` in train mode, its genuinely frozen parts in eval mode with ``frozen_eval``.

    A part is frozen when it holds parameters and none of them trains (a frozen backbone, the
    branches the Cambridge fine-tune leaves alone): its whole subtree runs in eval mode, so its
    BatchNorm statistics stay put and its dropout is off, as the paper runs its frozen
    transformers. Parameter-free modules (Dropout, stochastic depth, activations) follow the
    part they sit in: inside a trained part they stay in train mode. (Judging them by their
    own parameters, none, would switch every dropout of a fully trained model off.)
    """
    model.train()
    if not frozen_eval:
        return
    for module in model.modules():
        if module is model:
            continue
        parameters = list(module.parameters())
        if parameters and not any(p.requires_grad for p in parameters):
            module.eval()


def backbone_is_static(model: MSTransformer, cfg: TrainConfig) -> bool:
    """Return True when cached backbone maps can stand in for the live backbone.

    The backbone must be frozen and in eval mode; the training images must be the test
    transform, or a fixed set of augmented views (``feature_cache.augmented_views`` > 1).
    """
    frozen = not any(p.requires_grad for p in model.backbone.parameters())
    in_eval = model.config.freeze_backbone or cfg.freeze.frozen_eval
    views = cfg.feature_cache.augmented_views
    return frozen and in_eval and (not cfg.augmentation.enabled or views > 1)


def load_initial_weights(model: nn.Module, source: str | Path) -> str:
    """Load model weights from a checkpoint, a run folder (its latest) or a bundle.

    Returns the file actually read. Raises CheckpointError / BundleError naming the file.
    """
    path = Path(source)
    if path.suffix == '.safetensors':
        state = load_bundle(path).state_dict
        origin = str(path)
    else:
        checkpoint = ckpt.load_checkpoint(path)
        state, origin = checkpoint['model'], checkpoint['path']
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ckpt.CheckpointError(f'{origin}: weights do not fit the configured model: '
                                   f'{error}') from error
    return origin


def configure_determinism(cfg: TrainConfig, rank: int) -> None:
    """Seed every generator (torch seed + rank, as DETR) and pick deterministic kernels."""
    torch.manual_seed(cfg.seed.torch + rank)
    np.random.seed(cfg.seed.numpy + rank)
    random.seed(cfg.seed.python + rank)
    if cfg.deterministic:
        # cuBLAS needs this workspace setting for reproducible matmuls (CUDA >= 10.2).
        os.environ.setdefault('CUBLAS_WORKSPACE_CONFIG', ':4096:8')
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


def seed_worker(worker_id: int) -> None:
    """Seed numpy and random in a DataLoader worker from its torch seed; tune its allocator."""
    allocator.worker_init_fn(worker_id)
    seed = torch.initial_seed() % 2 ** 32
    np.random.seed(seed)
    random.seed(seed)


# ---------------------------------------------------------------------------------------------
# Logging
# ---------------------------------------------------------------------------------------------

class RunLogger:
    """CSV log and TensorBoard events of rank 0 (a no-op object on other ranks)."""

    def __init__(self, out_dir: Path, cfg: TrainConfig, enabled: bool, start_step: int) -> None:
        """Open ``out_dir/log.csv`` and ``out_dir/tensorboard``.

        Rows and events after ``start_step`` (the resumed checkpoint's step; 0 for a fresh run)
        were written by a killed run after its last checkpoint: they are dropped, so every step
        is logged once.
        """
        self.enabled = enabled
        self.csv_path = out_dir / 'log.csv'
        self.attention_path = out_dir / 'attention_log.csv'
        self.writer = None
        if not enabled:
            return
        self._csv_file, self._csv = self._open(self.csv_path, CSV_COLUMNS, start_step)
        self._attention_file, self._attention = self._open(self.attention_path,
                                                           ATTENTION_COLUMNS, start_step)
        if cfg.logging.tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(str(out_dir / 'tensorboard'),
                                        purge_step=start_step + 1)

    @staticmethod
    def _open(path: Path, columns: Sequence[str], step: int) -> tuple[Any, csv.DictWriter]:
        """Open a CSV log for appending, keeping only its rows up to ``step``."""
        if path.is_file():
            with path.open(newline='') as stream:
                rows = [row for row in csv.DictReader(stream) if int(row['step']) <= step]
            with path.open('w', newline='') as stream:
                writer = csv.DictWriter(stream, fieldnames=columns)
                writer.writeheader()
                writer.writerows(rows)
        new_file = not path.is_file()
        stream = path.open('a', newline='')
        writer = csv.DictWriter(stream, fieldnames=columns)
        if new_file:
            writer.writeheader()
        return stream, writer

    def attention(self, epoch: int, step: int, stats: dict[str, Any]) -> None:
        """Log per-layer, per-head encoder diagnostics (``encoder_head_stats``).

        CSV: one row per branch, layer and head. TensorBoard: per layer the mean over heads
        (``attention_<branch>/centroid_distance/layer<l>``) and every head
        (``.../layer<l>/head<h>``).
        """
        if not self.enabled:
            return
        for branch, branch_stats in stats.items():
            for layer, (distances, entropies) in enumerate(zip(branch_stats.centroid_distance,
                                                               branch_stats.entropy), start=1):
                for head, (distance, entropy) in enumerate(zip(distances, entropies), start=1):
                    self._attention.writerow({
                        'epoch': epoch, 'step': step, 'branch': branch, 'layer': layer,
                        'head': head, 'centroid_distance': f'{distance:.6g}',
                        'entropy': f'{entropy:.6g}'})
                if self.writer is None:
                    continue
                for name, values in (('centroid_distance', distances), ('entropy', entropies)):
                    tag = f'attention_{branch}/{name}/layer{layer}'
                    self.writer.add_scalar(tag, float(np.mean(values)), step)
                    for head, value in enumerate(values, start=1):
                        self.writer.add_scalar(f'{tag}/head{head}', value, step)
        self._attention_file.flush()

    def row(self, kind: str, epoch: int, step: int, values: dict[str, Any]) -> None:
        """Write one CSV row and the matching TensorBoard scalars."""
        if not self.enabled:
            return
        row = {'kind': kind, 'epoch': epoch, 'step': step, 'wall_time': f'{time.time():.3f}'}
        for key, value in values.items():
            row[key] = f'{value:.6g}' if isinstance(value, float) else value
        self._csv.writerow(row)
        self._csv_file.flush()
        if self.writer is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)) and math.isfinite(value):
                    self.writer.add_scalar(f'{kind}/{key}', value, step)

    def close(self) -> None:
        """Flush and close the files."""
        if self.enabled:
            self._csv_file.close()
            self._attention_file.close()
            if self.writer is not None:
                self.writer.close()


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------

@dataclass
class TrainResult:
    """What a finished run produced.

    Attributes:
        checkpoint: the final checkpoint.
        metrics: the final validation report (None when validation is off).
        global_step: optimizer steps done.
        folds: the cross-fitting fold runs trained after it (fold order; empty without).
        timing: ``RUN_DIR/crossfit/timing.json``'s summary (None without cross-fitting).
    """

    checkpoint: Path
    metrics: MetricsReport | None
    global_step: int
    folds: list['TrainResult'] = dataclasses.field(default_factory=list)
    timing: dict[str, Any] | None = None


@dataclass
class _Position:
    """Where training stands: ``iteration`` batches of ``epoch`` done, ``step`` in total."""

    epoch: int = 0
    iteration: int = 0
    step: int = 0


class Trainer:
    """One training run (built by :func:`train`); rank 0 writes every file."""

    def __init__(self, cfg: TrainConfig, out_dir: Path, data_root_override: str | None,
                 resume: str | None, overwrite: bool = False, *, fold: int | None = None,
                 feature_source: FeatureSource | None = None) -> None:
        """Set up processes, data, model, optimizer and (on resume) every saved state.

        ``fold`` makes this cross-fitting fold run k (the training split minus fold k);
        ``feature_source`` is the deployed run's cache its backbone maps are taken from.
        """
        self.cfg = cfg
        self.out_dir = Path(out_dir)
        self.fold = fold
        self.feature_source = feature_source
        self.context = distributed.init_distributed(resolve_device(cfg.device))
        self.device = self.context.device
        self.amp = cfg.amp and self.device.type == 'cuda'
        if cfg.optim.batch_size % self.context.world_size:
            raise ConfigError(f'{cfg.source}: optim.batch_size {cfg.optim.batch_size} is not '
                              f'divisible by the {self.context.world_size} processes')
        self.batch_size = cfg.optim.batch_size // self.context.world_size
        configure_determinism(cfg, self.context.rank)
        if resume is None:  # every rank checks, so that all of them stop on a refusal
            self._clear_previous_run(overwrite)
        if self.context.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        distributed.barrier(self.context)
        resume_state = self._resume_state(resume)
        if data_root_override is None and cfg.data.root is None and resume_state is not None:
            data_root_override = resume_state['data_root']  # where the interrupted run read
        self.root = data_root(cfg.data, data_root_override)
        self._set_up_data()
        self._set_up_model(resume_state)
        self._set_up_loaders()
        self.position = _Position()
        self.epoch_totals: EpochTotals | None = None
        if resume_state is not None:
            self._restore(resume_state)
        self.logger = RunLogger(self.out_dir, cfg, self.context.is_main, self.position.step)
        if self.context.is_main:
            dump_config(cfg, self.out_dir / 'config.yaml')

    # -- set-up --------------------------------------------------------------------------------

    def _clear_previous_run(self, overwrite: bool) -> None:
        """Refuse to mix a fresh run with an earlier one, or (``overwrite``) delete it.

        The feature cache is kept: it is keyed by its inputs and stays valid.
        """
        previous = ckpt.list_checkpoints(self.out_dir)
        if not previous:
            return
        if not overwrite:
            raise ConfigError(f'{self.out_dir}: already holds checkpoints of a run (latest '
                              f'{previous[-1].name}); pass --resume to continue it (a finished '
                              'run is left as is) or --overwrite to start over')
        distributed.barrier(self.context)  # all ranks have looked before rank 0 deletes
        if not self.context.is_main:
            return
        for path in previous:
            path.unlink()
        (self.out_dir / 'log.csv').unlink(missing_ok=True)
        (self.out_dir / 'attention_log.csv').unlink(missing_ok=True)
        shutil.rmtree(self.out_dir / 'tensorboard', ignore_errors=True)
        LOGGER.info('--overwrite: removed %d checkpoints and the logs of %s', len(previous),
                    self.out_dir)

    def _resume_state(self, resume: str | None) -> dict[str, Any] | None:
        """Load the checkpoint to resume from ('auto': the run folder's latest), if any."""
        if resume is None:
            return None
        if resume == 'auto':
            latest = ckpt.latest_checkpoint(self.out_dir)
            if latest is None:
                LOGGER.info('--resume: no checkpoint in %s yet; starting from scratch',
                            self.out_dir)
                return None
            resume = str(latest)
        state = ckpt.load_checkpoint(resume)
        LOGGER.info('resuming from %s', state['path'])
        return state

    def _set_up_data(self) -> None:
        """Read the training split (or fold's part) and check it against the scene count."""
        cfg = self.cfg
        if self.fold is None:
            self.train_samples = read_split(cfg.data, cfg.data.train_split, self.root)
        else:
            self.train_samples = read_crossfit_folds(cfg.data, self.root)[self.fold][0]
        self.scene_names = sorted(self.train_samples)
        if len(self.scene_names) != cfg.model.num_scenes:
            raise ConfigError(f'{cfg.source}: model.num_scenes is {cfg.model.num_scenes} but '
                              f'the {cfg.data.train_split} split has {len(self.scene_names)} '
                              f'scenes {self.scene_names}')
        self.train_dataset = build_dataset(self.train_samples, self.scene_names)
        self.fingerprint = data_fingerprint(self.train_dataset.samples, self.root)
        # What the network sees of each scene's camera, for the bundle (mspr-export).
        self.training_cameras = training_cameras(self.train_dataset.samples, self.scene_names,
                                                 cfg.augmentation.preprocessing())
        self.val_dataset: MultiSceneDataset | None = None
        if cfg.validation.every_epochs or cfg.validation.at_end:
            self.val_samples = read_split(cfg.data, 'val', self.root)
            self.val_dataset = build_dataset(self.val_samples, self.scene_names)

    def _set_up_model(self, resume_state: dict[str, Any] | None) -> None:
        """Build model, criterion, optimizer, scheduler and scaler."""
        cfg = self.cfg
        self.model = build_model(cfg.model)
        if cfg.checkpoint.init_from is not None and resume_state is None:
            origin = load_initial_weights(self.model, cfg.checkpoint.init_from)
            LOGGER.info('initial weights from %s', origin)
        try:
            self.trainable = freeze_parameters(self.model, cfg.freeze.trainable)
        except ConfigError as error:
            raise ConfigError(f'{cfg.source}: {error}') from None
        if not self.trainable:
            raise ConfigError(f'{cfg.source}: no trainable parameter left (freeze.trainable '
                              'and model.freeze_backbone freeze everything)')
        self.model.to(self.device)
        self.criterion = build_criterion(cfg).to(self.device)
        self.step_module: nn.Module = TrainStep(self.model, self.criterion,
                                                need_qka=cfg.loss.lambda_aux > 0)
        if self.context.enabled:
            device_ids = [self.device.index] if self.device.type == 'cuda' else None
            self.step_module = DistributedDataParallel(self.step_module, device_ids=device_ids)
        parameters = [p for p in self.model.parameters() if p.requires_grad]
        parameters += [p for p in self.criterion.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(parameters, lr=cfg.optim.lr, betas=cfg.optim.betas,
                                          eps=cfg.optim.eps,
                                          weight_decay=cfg.optim.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.StepLR(
            self.optimizer, step_size=cfg.schedule.step_size, gamma=cfg.schedule.gamma)
        self.scaler = torch.amp.GradScaler('cuda', enabled=self.amp)

    def _feature_datasets(self) -> tuple[Dataset, Dataset | None] | None:
        """Return cached-feature datasets (train, val) when the cache applies, else None."""
        cfg = self.cfg
        mode = cfg.feature_cache.mode
        static = backbone_is_static(self.model, cfg)
        if mode == 'off' or (mode == 'auto' and not static):
            return None
        if not static:
            raise ConfigError(f'{cfg.source}: feature_cache.mode is "on" but the backbone maps '
                              'change during training (the backbone must be frozen, in eval '
                              'mode, and augmentation.enabled false unless '
                              'feature_cache.augmented_views > 1)')
        directory = self.out_dir / 'feature_cache' if cfg.feature_cache.on_disk else None
        transform = eval_transform(cfg.augmentation)
        views = cfg.feature_cache.augmented_views
        augment = None
        if views > 1:
            augment = AugmentedViews(train_transform(cfg.augmentation),
                                     dataclasses.asdict(cfg.augmentation), cfg.seed.torch)
        train_cache = None
        if self.feature_source is not None:
            # A fold run's images are the deployed run's: take their maps instead of the
            # backbone's time; validation maps are the deployed run's files.
            directory = self.feature_source.directory
            train_cache = self.feature_source.subset(self.train_dataset.samples, self.root,
                                                     self.model)
            if train_cache is not None:
                LOGGER.info('fold run: %d backbone maps taken from the deployed run\'s cache',
                            len(train_cache))
        if train_cache is None:
            train_cache = self._shared_cache(self.train_dataset, transform, directory,
                                             views=views, augment=augment)
        if self.fold is None:
            self.train_feature_source = FeatureSource.of(train_cache, self.train_dataset,
                                                         self.root, self.model, directory)
        val_set = None
        if self.val_dataset is not None:
            val_set = CachedFeatureDataset(
                self._shared_cache(self.val_dataset, transform, directory), self.val_dataset)
        return CachedFeatureDataset(train_cache, self.train_dataset), val_set

    def _shared_cache(self, dataset: MultiSceneDataset, transform, directory: Path | None,
                      **views):
        """Compute the cache on rank 0 (saved to disk), the other ranks read it."""
        kwargs = dict(batch_size=EVAL_BATCH_SIZE, num_workers=self.cfg.data.num_workers,
                      progress=self.cfg.logging.progress and self.context.is_main, **views)
        if directory is None or not self.context.enabled:
            return load_or_compute(self.model, dataset, transform, self.device, directory,
                                   **kwargs)
        cache = None
        if self.context.is_main:
            cache = load_or_compute(self.model, dataset, transform, self.device, directory,
                                    **kwargs)
        distributed.barrier(self.context)
        if cache is None:
            cache = load_or_compute(self.model, dataset, transform, self.device, directory,
                                    compute=False, **kwargs)
            if cache is None:
                raise RuntimeError(f'rank {self.context.rank}: rank 0 wrote no feature cache '
                                   f'in {directory}')
        return cache

    def _set_up_loaders(self) -> None:
        """Build the samplers and DataLoaders (cached maps or decoded images)."""
        cfg = self.cfg
        self.train_feature_source: FeatureSource | None = None  # set by _feature_datasets
        cached = self._feature_datasets()
        self.uses_feature_cache = cached is not None
        if cached is not None:
            train_set, val_set = cached
            workers = 0  # items are tensor slices in memory: workers would only copy them
        else:
            train_set = SeededDraws(self.train_dataset, train_transform(cfg.augmentation))
            val_set = (SeededDraws(self.val_dataset, eval_transform(cfg.augmentation))
                       if self.val_dataset is not None else None)
            workers = cfg.data.num_workers
        self.sampler = build_sampler(
            self.train_dataset.scene_of, balanced=cfg.sampling.balanced_scenes,
            shuffle=cfg.sampling.shuffle, seed=cfg.seed.sampler,
            num_replicas=self.context.world_size, rank=self.context.rank)
        # An explicit generator keeps the loader from drawing its worker base seed from the
        # global RNG, whose state the checkpoint restores (resume would otherwise shift it).
        generator = torch.Generator().manual_seed(cfg.seed.torch)
        pin = self.device.type == 'cuda'
        self.train_loader = DataLoader(train_set, batch_size=self.batch_size,
                                       sampler=self.sampler, num_workers=workers,
                                       pin_memory=pin, worker_init_fn=seed_worker,
                                       generator=generator)
        self.val_loader = None
        if val_set is not None:
            self.val_loader = DataLoader(val_set, batch_size=EVAL_BATCH_SIZE, shuffle=False,
                                         num_workers=workers, pin_memory=pin)

    def _restore(self, state: dict[str, Any]) -> None:
        """Load every state of a checkpoint (RNG last: nothing may draw after it)."""
        if state['scene_names'] != self.scene_names:
            raise ckpt.CheckpointError(f'{state["path"]}: scenes {state["scene_names"]} differ '
                                       f'from the data\'s {self.scene_names}')
        if state['data_fingerprint'] != self.fingerprint:
            LOGGER.warning('%s: the training set changed since this checkpoint (data '
                           'fingerprint differs); resuming anyway', state['path'])
        changed = _changed_keys(state['config'], self.cfg.to_dict())
        if changed:
            LOGGER.warning('%s: resuming with a config that differs from the checkpoint\'s in '
                           '%s', state['path'], ', '.join(changed))
        self.model.load_state_dict(state['model'])
        self.criterion.load_state_dict(state['criterion'])
        self.optimizer.load_state_dict(state['optimizer'])
        self.scheduler.load_state_dict(state['scheduler'])
        self.scaler.load_state_dict(state['scaler'])
        self.sampler.load_state_dict(state['sampler'])
        progress = state['progress']
        self.position = _Position(progress['epoch'], progress['iteration'],
                                  progress['global_step'])
        rank = self.context.rank
        per_rank = state['per_rank']
        if len(per_rank) != self.context.world_size:
            LOGGER.warning('%s: written by %d processes, resumed with %d: RNG streams and '
                           'epoch loss sums restart, the result is no longer bit-exact',
                           state['path'], len(per_rank), self.context.world_size)
        if rank < len(per_rank) and self.position.iteration > 0:
            self.epoch_totals = EpochTotals.from_tensor(per_rank[rank]['epoch_totals'])
        if rank < len(per_rank):
            ckpt.restore_rng_state(per_rank[rank]['rng'])

    # -- checkpoints ---------------------------------------------------------------------------

    def _iterations_per_epoch(self) -> int:
        """Return this process's batches per epoch."""
        return -(-self.sampler.local_length() // self.batch_size)

    def save(self, mid_epoch: bool, totals: EpochTotals | None) -> Path | None:
        """Write a checkpoint of the current position (collective: every rank calls it)."""
        totals = totals if totals is not None else EpochTotals()
        mine = {'rng': ckpt.capture_rng_state(),
                'epoch_totals': totals.as_tensor(torch.device('cpu'))}
        per_rank = distributed.gather_objects(mine, self.context)
        path = None
        if self.context.is_main:
            state = {
                'format': ckpt.CHECKPOINT_FORMAT,
                'model': self.model.state_dict(),
                'criterion': self.criterion.state_dict(),
                'optimizer': self.optimizer.state_dict(),
                'scheduler': self.scheduler.state_dict(),
                'scaler': self.scaler.state_dict(),
                'sampler': self.sampler.state_dict(),
                'progress': {'epoch': self.position.epoch, 'iteration': self.position.iteration,
                             'global_step': self.position.step, 'epoch_done': not mid_epoch},
                'per_rank': per_rank,
                'config': self.cfg.to_dict(),
                'scene_names': list(self.scene_names),
                'data_fingerprint': self.fingerprint,
                'data_root': str(self.root),
                'training_camera': {name: record.summary()
                                    for name, record in self.training_cameras.items()},
                'feature_cache': self.uses_feature_cache,
                'crossfit_fold': (None if self.fold is None else
                                  {'fold': self.fold, 'folds': self.cfg.data.calibration_folds}),
            }
            path = self.out_dir / ckpt.checkpoint_name(self.position.step, mid_epoch)
            ckpt.save_checkpoint(path, state)
            ckpt.prune_iteration_checkpoints(self.out_dir,
                                             self.cfg.checkpoint.keep_iter_checkpoints)
        distributed.barrier(self.context)
        return path

    # -- loop ----------------------------------------------------------------------------------

    def _on_iteration(self, info: IterationInfo, totals: EpochTotals) -> None:
        """Count the step, log every N iterations, checkpoint every N iterations."""
        cfg = self.cfg
        self.position.iteration = info.iteration
        self.position.step += 1
        step = self.position.step
        if step % cfg.logging.every_iters == 0:
            self.logger.row('iter', info.epoch, step, {
                **info.losses, **self._loss_weights(),
                'lr': self.optimizer.param_groups[0]['lr'],
                'images_per_s': info.images_per_s * self.context.world_size})
            if self.context.is_main and info.batch is not None:
                self.logger.attention(info.epoch, step, self._attention_stats(info.batch))
        every = cfg.checkpoint.every_iters
        if every and step % every == 0 and info.iteration < info.iterations:
            self.save(mid_epoch=True, totals=totals)

    def _attention_stats(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Return the encoders' per-head diagnostics on the first images of ``batch``.

        Logged for every model, the QKA-free baseline included, so the collapse the QKA loss
        prevents is visible where it happens. Eval mode, no gradient; modes restored after.
        """
        part = {key: value[:ATTENTION_IMAGES] for key, value in batch.items()
                if key in ('image', 'feat_t', 'feat_rot')}
        return encoder_head_stats(self.model, lambda: run_model(self.model, part, scene=None))

    def _loss_weights(self) -> dict[str, float]:
        """Return the current s_x, s_q."""
        pose_loss = self.criterion.pose_loss
        return {'s_x': float(pose_loss.s_x.detach()), 's_q': float(pose_loss.s_q.detach())}

    def validate(self) -> MetricsReport:
        """Evaluate on the validation split (rank 0) with the predicted scene."""
        predictions = evaluate(self.model, self.val_loader, self.device, amp=self.amp)
        return self.metrics(predictions)

    def metrics(self, predictions: Predictions) -> MetricsReport:
        """Return the metrics report of validation predictions (with the naive baseline)."""
        baseline = NaiveBaseline.from_training_poses(training_poses(self.train_samples))
        return compute_metrics(
            self.scene_names, predictions.gt_scene, predictions.gt_position,
            predictions.gt_orientation, predictions.pred_scene, predictions.pred_position,
            predictions.pred_orientation, thresholds=self.cfg.validation.recall_thresholds,
            baseline=baseline)

    def fit(self) -> TrainResult:
        """Run the remaining epochs; return the final checkpoint and validation metrics."""
        cfg = self.cfg
        epochs = cfg.schedule.epochs
        iterations = self._iterations_per_epoch()
        report = None
        last_path = ckpt.latest_checkpoint(self.out_dir) if self.position.step else None
        if self.position.epoch >= epochs:
            LOGGER.info('run already complete (%d epochs)', epochs)
        for epoch in range(self.position.epoch, epochs):
            start = self.position.iteration if epoch == self.position.epoch else 0
            self.position.epoch, self.position.iteration = epoch, start
            self.sampler.set_epoch(epoch)
            self.sampler.set_start(start * self.batch_size)
            set_train_mode(self.model, cfg.freeze.frozen_eval)
            self.criterion.train()
            bar = None
            if cfg.logging.progress and self.context.is_main:
                bar = tqdm(total=iterations, initial=start, desc=f'epoch {epoch + 1}/{epochs}',
                           dynamic_ncols=True)
            totals = self.epoch_totals if start else None
            self.epoch_totals = None
            try:
                totals = train_one_epoch(
                    self.step_module, self.train_loader, self.optimizer, device=self.device,
                    epoch=epoch, iterations=iterations, start_iteration=start, totals=totals,
                    scaler=self.scaler, amp=self.amp, on_iteration=self._on_iteration,
                    progress=bar)
            finally:
                if bar is not None:
                    bar.close()
            lr = self.optimizer.param_groups[0]['lr']
            self.scheduler.step()
            self.position.epoch, self.position.iteration = epoch + 1, 0
            reduced = distributed.all_reduce_sum(totals.as_tensor(self.device), self.context)
            values: dict[str, Any] = {**EpochTotals.from_tensor(reduced).means(),
                                      **self._loss_weights(), 'lr': lr}
            done = epoch + 1 == epochs
            if (cfg.validation.every_epochs and (epoch + 1) % cfg.validation.every_epochs == 0
                    or done and cfg.validation.at_end) and self.val_loader is not None:
                if self.context.is_main:
                    report = self.validate()
                    values.update(val_median_position_m=report.average_median_position_m,
                                  val_median_orientation_deg=report.average_median_orientation_deg,
                                  val_scene_accuracy=report.scene_accuracy)
                distributed.barrier(self.context)
            self.logger.row('epoch', epoch, self.position.step, values)
            if self.context.is_main:
                LOGGER.info('epoch %d/%d: %s', epoch + 1, epochs, _format_values(values))
            every = cfg.checkpoint.every_epochs
            if done or every and (epoch + 1) % every == 0:
                last_path = self.save(mid_epoch=False, totals=None)
        if self.context.is_main and report is not None:
            (self.out_dir / 'val_metrics.md').write_text(report.to_markdown())
        self.logger.close()
        return TrainResult(checkpoint=last_path, metrics=report, global_step=self.position.step)


def _changed_keys(old: Any, new: Any, prefix: str = '') -> list[str]:
    """Return the dotted keys whose values differ between two nested config dicts."""
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(set(old) | set(new))
        return [changed for key in keys
                for changed in _changed_keys(old.get(key), new.get(key), f'{prefix}{key}.')]
    return [prefix[:-1]] if old != new else []


def _format_values(values: dict[str, Any]) -> str:
    """Return ``key=value`` pairs for the log line of an epoch."""
    return ' '.join(f'{key}={value:.4g}' if isinstance(value, float) else f'{key}={value}'
                    for key, value in values.items()
                    if not (isinstance(value, float) and math.isnan(value)))


def train(cfg: TrainConfig, out_dir: str | Path, data_root_override: str | None = None,
          resume: str | None = None, overwrite: bool = False,
          crossfit_folds: bool = True) -> TrainResult:
    """Run (or resume) a training run in this process (one rank under torchrun).

    With ``data.calibration_split: crossfit`` the fold runs follow the deployed run (module
    docstring), each resumed or started as the deployed run was.

    Args:
        cfg: the configuration.
        out_dir: run folder (checkpoints, logs, cache, resolved config).
        data_root_override: dataset root overriding ``cfg.data.root``.
        resume: None, 'auto' (latest checkpoint in ``out_dir``, if any) or a checkpoint path
            (of the deployed run; the fold runs then resume from their latest).
        overwrite: delete an earlier run's checkpoints and logs in ``out_dir`` and in its fold
            folders (else a fresh run there is refused).
        crossfit_folds: train the fold runs of a 'crossfit' config (False: only the deployed
            run; its time is still recorded, and ``mspr-export`` needs the folds later).

    Returns:
        the deployed run's result, with the fold runs' results and the training times.
    """
    out_dir = Path(out_dir)
    crossfit = cfg.data.calibration_split == CROSSFIT_SPLIT
    started = time.perf_counter()
    trainer = Trainer(cfg, out_dir, data_root_override, resume, overwrite)
    context = trainer.context
    try:
        if not crossfit:
            return trainer.fit()
        result = timed_fit(trainer, None, out_dir, started)
        if crossfit_folds:
            source, root = trainer.train_feature_source, str(trainer.root)
            del trainer  # the deployed run's model and optimizer are not needed any more
            for fold in range(cfg.data.calibration_folds):
                started = time.perf_counter()
                fold_trainer = Trainer(fold_config(cfg, fold), fold_dir(out_dir, fold), root,
                                       None if resume is None else 'auto', overwrite,
                                       fold=fold, feature_source=source)
                result.folds.append(timed_fit(fold_trainer, fold, out_dir, started))
                del fold_trainer
        result.timing = TrainingTime(out_dir).summary(cfg.data.calibration_folds)
        return result
    finally:
        distributed.shutdown(context)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line of ``mspr-train``."""
    parser = argparse.ArgumentParser(
        prog='mspr-train', description='Train (or resume training) an mspr_ros model from a '
        'YAML config; run under torchrun for data-parallel training.')
    parser.add_argument('--config',
                        help='YAML config file, or the name of a bundled one (synth_demo.yaml); '
                             'with --resume the default is the run\'s config.yaml')
    parser.add_argument('--data-root', help='dataset root (overrides data.root)')
    parser.add_argument('--out', required=True, help='run folder')
    parser.add_argument('--set', dest='overrides', action='append', default=[],
                        metavar='KEY.SUB=VALUE', help='override a config value (repeatable)')
    parser.add_argument('--resume', nargs='?', const='auto', default=None, metavar='CHECKPOINT',
                        help='continue from the latest checkpoint in --out (or the given one)')
    parser.add_argument('--overwrite', action='store_true',
                        help='start over in a --out that holds an earlier run (its feature '
                             'cache is reused)')
    parser.add_argument('--device', help="shortcut for --set device=... ('auto', 'cpu', "
                                         "'cuda', 'cuda:N')")
    parser.add_argument('--no-crossfit-folds', dest='crossfit_folds', action='store_false',
                        help="with data.calibration_split 'crossfit': train only the deployed "
                             'run, not the fold runs in RUN_DIR/crossfit/ (mspr-export needs '
                             'them: a later --resume trains them)')
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``mspr-train``; returns the exit status."""
    # Before anything else: on tcmalloc this may restart the process (argv None: a real run).
    active = allocator.use_preferred_allocator(argv)
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(levelname)s %(message)s')
    if active:
        logging.info('allocator: %s', active)
    overrides = list(args.overrides) + ([f'device={args.device}'] if args.device else [])
    config = args.config
    if config is None:
        config = Path(args.out) / 'config.yaml'
        if args.resume is None or not config.is_file():
            print('mspr-train: error: --config is required (it defaults to the run\'s '
                  'config.yaml only with --resume)', file=sys.stderr)
            return 2
    try:
        cfg = load_config(config, overrides)
        result = train(cfg, args.out, args.data_root, args.resume, args.overwrite,
                       crossfit_folds=args.crossfit_folds)
    except (ConfigError, DatasetError, ckpt.CheckpointError, BackboneWeightsError) as error:
        print(f'mspr-train: error: {error}', file=sys.stderr)
        return 2
    if distributed.launched_by_torchrun() and os.environ.get('RANK', '0') != '0':
        return 0
    print(f'final checkpoint: {result.checkpoint}')
    if result.metrics is not None:
        print(result.metrics.to_markdown())
    for fold, fold_result in enumerate(result.folds):
        print(f'cross-fitting fold {fold}: {fold_result.checkpoint}')
    timing = result.timing
    if timing is not None and timing['main_s'] is not None:
        extra = ('fold runs not (all) trained yet' if timing['extra_s'] is None else
                 f'fold runs {timing["extra_s"]:.0f} s = {timing["extra_ratio"]:.2f} x the '
                 'deployed run')
        print(f'training time: deployed run {timing["main_s"]:.0f} s, {extra}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
