"""Cross-fitting: the fold runs beside a deployed run, their training time, their checkpoints.

With ``data.calibration_split: crossfit`` the deployed run trains on every training sequence
and ``mspr-train`` also trains ``data.calibration_folds`` fold runs (K)::

    RUN_DIR/                      the deployed run (checkpoints, logs, feature_cache/)
    RUN_DIR/crossfit/fold_<k>/    fold k: the same config, seeds and schedule, trained on the
                                  training split minus fold k (datasets.read_crossfit_folds)
    RUN_DIR/crossfit/timing.json  wall-clock seconds of the deployed run and of each fold run

Each fold run is a normal run folder: a killed one resumes like the deployed run. ``mspr-export``
predicts fold k's held-out sequences with fold k's model, so every training sequence gets errors
from a model that never saw it (the out-of-fold errors), and fits the covariance and the error
correlation on them. A fold run of a frozen-backbone recipe takes its cached backbone maps from
the deployed run's cache (:class:`FeatureSource`) instead of running the backbone again.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
import json
import logging
from pathlib import Path
import time
from typing import Any, Sequence

import torch
from torch import nn

from mspr_ros.runtime.atomic_file import atomic_write
from mspr_training import checkpoint as ckpt
from mspr_training.config import TrainConfig
from mspr_training.data import MultiSceneDataset, PoseSample
from mspr_training.datasets import data_fingerprint, read_crossfit_folds, sample_identity
from mspr_training.feature_cache import FeatureCache

LOGGER = logging.getLogger('mspr_training.crossfit')
FOLDS_DIR = 'crossfit'
TIMING_FILE = 'timing.json'
MAIN_RUN = 'main'


class CrossfitError(ValueError):
    """The fold runs a cross-fitted calibration needs are missing, unfinished or stale."""


def fold_dir(run_dir: str | Path, fold: int) -> Path:
    """Return the folder of fold run ``fold`` of the deployed run in ``run_dir``."""
    return Path(run_dir) / FOLDS_DIR / f'fold_{fold}'


def run_label(fold: int | None) -> str:
    """Return the timing file's name of a run: 'main' or 'fold_<k>'."""
    return MAIN_RUN if fold is None else f'fold_{fold}'


def fold_config(cfg: TrainConfig, fold: int) -> TrainConfig:
    """Return the config of fold run ``fold``: the deployed run's, initialised from its fold.

    A fine-tune (``checkpoint.init_from``) of a cross-fitted run starts each fold run from the
    same fold of that run, so no fold run starts from weights that saw its held-out sequences.
    """
    source = cfg.checkpoint.init_from
    if source is None:
        return cfg
    path = Path(source)
    folder = fold_dir(path if path.is_dir() else path.parent, fold)
    if path.suffix != '.safetensors' and ckpt.latest_checkpoint(folder) is not None:
        LOGGER.info('fold run %d starts from %s', fold, folder)
        return dataclasses.replace(
            cfg, checkpoint=dataclasses.replace(cfg.checkpoint, init_from=str(folder)))
    LOGGER.warning('fold run %d starts from %s, which has no fold run %s: those weights were '
                   'trained on the sequences the fold holds out, so its out-of-fold errors '
                   '(and the covariance fitted on them) come out optimistic', fold, source,
                   folder)
    return cfg


# ---------------------------------------------------------------------------------------------
# Training time
# ---------------------------------------------------------------------------------------------

def timed_fit(trainer: Any, fold: int | None, run_dir: Path, started: float) -> Any:
    """Return ``trainer.fit()`` (a ``train.Trainer``), its session's time added to the file.

    ``started`` is when the session began (the trainer's set-up, feature cache included, is
    part of the run's time).
    """
    start_step = trainer.position.step
    result = trainer.fit()
    if trainer.context.is_main:
        TrainingTime(run_dir).record(
            run_label(fold), time.perf_counter() - started, fresh=start_step == 0,
            trained=result.global_step > start_step, global_step=result.global_step,
            train_samples=len(trainer.train_dataset),
            folds=trainer.cfg.data.calibration_folds)
    return result


class TrainingTime:
    """``RUN_DIR/crossfit/timing.json``: wall-clock seconds per run, summed over resumes.

    A run's seconds restart when it starts from step 0 and grow by every session that trained
    it further (a resumed session adds its own time); a session that found the run complete
    adds nothing.
    """

    def __init__(self, run_dir: str | Path) -> None:
        """Read the timing file of the deployed run in ``run_dir`` (empty when absent)."""
        self.path = Path(run_dir) / FOLDS_DIR / TIMING_FILE
        self.runs: dict[str, dict[str, Any]] = {}
        if self.path.is_file():
            try:
                self.runs = dict(json.loads(self.path.read_text()).get('runs') or {})
            except (OSError, ValueError, AttributeError) as error:
                LOGGER.warning('%s: unreadable (%s); training times restart', self.path, error)

    def record(self, label: str, seconds: float, *, fresh: bool, trained: bool,
               global_step: int, train_samples: int, folds: int) -> None:
        """Add one session of run ``label`` and write the file.

        Args:
            fresh: the session started the run from step 0 (earlier seconds are dropped).
            trained: the session ran optimizer steps (else its seconds are not training time).
        """
        entry = {} if fresh else dict(self.runs.get(label) or {})
        if trained or fresh:
            entry['seconds'] = float(entry.get('seconds', 0.0)) + float(seconds)
            entry['sessions'] = int(entry.get('sessions', 0)) + 1
        entry.update(global_step=int(global_step), train_samples=int(train_samples))
        self.runs[label] = entry
        if label == MAIN_RUN and fresh:
            # A deployed run started afresh makes the fold runs' times belong to an old run.
            self.runs = {MAIN_RUN: entry}
        self.save(folds)

    def save(self, folds: int) -> None:
        """Write the runs and their summary atomically."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        document = {'runs': self.runs, **self.summary(folds)}
        with atomic_write(self.path) as handle:
            handle.write((json.dumps(document, indent=2) + '\n').encode())

    def summary(self, folds: int) -> dict[str, Any]:
        """Return main, per-fold and extra seconds, and extra / main (None where unknown)."""
        main = (self.runs.get(MAIN_RUN) or {}).get('seconds')
        fold_seconds = [(self.runs.get(run_label(k)) or {}).get('seconds')
                        for k in range(folds)]
        extra = None if None in fold_seconds else float(sum(fold_seconds))
        ratio = extra / main if extra is not None and main else None
        return {'main_s': main, 'folds_s': fold_seconds, 'extra_s': extra,
                'extra_ratio': ratio}


# ---------------------------------------------------------------------------------------------
# Backbone maps of the deployed run, reused by the fold runs
# ---------------------------------------------------------------------------------------------

@dataclass
class FeatureSource:
    """The deployed run's cached training maps, which the fold runs take theirs from.

    Attributes:
        cache: the deployed run's training cache (rows view-major over ``identities``).
        identities: sample identity -> item index in the deployed run's training set.
        backbone: the backbone state the maps were computed with (CPU tensors).
        directory: the deployed run's cache folder (validation maps are looked up there).
    """

    cache: FeatureCache
    identities: dict[str, int]
    backbone: dict[str, torch.Tensor]
    directory: Path | None

    @classmethod
    def of(cls, cache: FeatureCache, dataset: MultiSceneDataset, root: Path,
           model: nn.Module, directory: Path | None) -> 'FeatureSource':
        """Describe the cache of a run's training ``dataset`` computed with ``model``."""
        identities = {sample_identity(s, root): i for i, s in enumerate(dataset.samples)}
        backbone = {name: tensor.detach().cpu().clone()
                    for name, tensor in model.backbone.state_dict().items()}
        return cls(cache, identities, backbone, directory)

    def subset(self, samples: Sequence[PoseSample], root: Path,
               model: nn.Module) -> FeatureCache | None:
        """Return the maps of ``samples`` (same views), or None when they cannot be reused.

        Reuse needs the same backbone weights and every sample in the deployed run's set. A
        fold's view v of an image is the deployed run's view v of that image.
        """
        state = model.backbone.state_dict()
        if set(state) != set(self.backbone) or not all(
                torch.equal(state[name].detach().cpu(), tensor)
                for name, tensor in self.backbone.items()):
            return None
        try:
            items = [self.identities[sample_identity(s, root)] for s in samples]
        except KeyError:
            return None
        count = len(self.cache)
        rows = torch.tensor([view * count + item for view in range(self.cache.views)
                             for item in items], dtype=torch.long)
        return FeatureCache(self.cache.feat_t[rows], self.cache.feat_rot[rows],
                            f'{self.cache.key}:subset{len(items)}', self.cache.views)


# ---------------------------------------------------------------------------------------------
# The fold runs' checkpoints
# ---------------------------------------------------------------------------------------------

def fold_checkpoints(run_dir: str | Path, cfg: TrainConfig, scene_names: Sequence[str],
                     root: Path) -> list[tuple[dict[str, Any], dict[str, list[PoseSample]]]]:
    """Return the latest checkpoint of every fold run with the samples it held out.

    Raises:
        CrossfitError: a fold run is missing, unfinished, of other scenes or folds, or trained
            on other images than its fold's training part is now (its held-out sequences may
            then have been trained on).
    """
    folds = cfg.data.calibration_folds
    parts = read_crossfit_folds(cfg.data, root)
    loaded = []
    for fold, (training, held_out) in enumerate(parts):
        folder = fold_dir(run_dir, fold)
        latest = ckpt.latest_checkpoint(folder)
        if latest is None:
            raise CrossfitError(
                f'{folder}: no checkpoint of cross-fitting fold {fold} of {folds} (the '
                'crossfit calibration predicts every training sequence with a fold run that '
                f'left it out); run mspr-train --out {run_dir} --resume to train the missing '
                'fold runs, or export with --calibration-split none')
        state = ckpt.load_checkpoint(latest)
        where = f'{folder} ({latest.name})'
        wanted = {'fold': fold, 'folds': folds}
        if state.get('crossfit_fold') != wanted:
            raise CrossfitError(f'{where}: is fold {state.get("crossfit_fold")}, expected '
                                f'{wanted}; retrain the folds (mspr-train --overwrite)')
        epochs = TrainConfig.from_dict(state['config']).schedule.epochs
        if state['progress']['epoch'] < epochs:
            raise CrossfitError(f'{where}: fold run unfinished (epoch {state["progress"]["epoch"]}'
                                f' of {epochs}); run mspr-train --out {run_dir} --resume')
        if list(state['scene_names']) != list(scene_names):
            raise CrossfitError(f'{where}: scenes {state["scene_names"]} differ from the '
                                f'deployed run\'s {list(scene_names)}')
        flat = [sample for scene in sorted(training) for sample in training[scene]]
        if state['data_fingerprint'] != data_fingerprint(flat, root):
            raise CrossfitError(f'{where}: trained on other images than fold {fold}\'s '
                                'training part holds now (data fingerprint differs): its '
                                'held-out sequences may have been trained on; retrain the '
                                'folds (mspr-train --overwrite)')
        loaded.append((state, held_out))
    return loaded
