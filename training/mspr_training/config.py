"""Typed training configuration loaded from YAML, with ``--set key.sub=value`` overrides.

A config file is a mapping with the sections of :class:`TrainConfig`. Every problem raises
:class:`ConfigError` naming the file, the line (when the key is in the file) and the dotted key,
e.g. ``configs/x.yaml:14: optim.lr: must be > 0, got -1.0``. The paper's recipes and the
rendered-world configs live in ``mspr_training/configs/`` (see :func:`bundled_config`).
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
import math
from pathlib import Path
import re
import types
import typing
from typing import Any, Mapping, Sequence, Union

import yaml

from mspr_ros.model.config import ModelConfig
from mspr_ros.preprocess import IMAGENET_MEAN, IMAGENET_STD, PreprocessingConfig

CONFIG_DIR = Path(__file__).resolve().parent / 'configs'
DATA_FORMATS = ('cambridge', '7scenes', 'label_csv', 'rosbag')
DEVICES_HELP = "'auto', 'cpu', 'cuda' or 'cuda:N'"
FEATURE_CACHE_MODES = ('auto', 'on', 'off')
LABEL_CSV_ROTATIONS = ('auto', 'camera_to_world', 'world_to_camera')
#: The split made of training sequences held out for calibration (``data.calibration_split``).
CALIBRATION_SPLIT = 'calibration'
#: Calibration from out-of-fold errors: the deployed run trains on every training sequence and
#: ``data.calibration_folds`` fold runs each predict the sequences they left out.
CROSSFIT_SPLIT = 'crossfit'
#: How images of several cameras are read (``DataConfig.camera``).
DATA_CAMERAS = ('native', 'reproject')
#: Share of a single-sequence scene's frames (its end) held out for calibration.
CALIBRATION_TAIL_FRACTION = 0.2


class ConfigError(ValueError):
    """A configuration problem; the message names the file, line and dotted key."""


class FieldError(ValueError):
    """Raised by a section's validation to point at one of its fields."""

    def __init__(self, name: str, message: str) -> None:
        """Remember the offending field ``name``; ``message`` says what is wrong."""
        super().__init__(message)
        self.name = name


def _require(condition: bool, name: str, message: str) -> None:
    """Raise FieldError(name, message) unless ``condition``."""
    if not condition:
        raise FieldError(name, message)


@dataclass
class DataConfig:
    """Where the posed images come from.

    Attributes:
        format: 'cambridge' (``<root>/<Scene>/dataset_<split>.txt``), '7scenes'
            (``<root>/<scene>/TrainSplit.txt``), 'label_csv' (MS-Transformer label files named
            in ``label_files``) or 'rosbag' (bags named in ``bags``).
        root: dataset root folder; ``mspr-train --data-root`` overrides it. Relative paths in
            ``label_files``/``bags`` are relative to it.
        scenes: scene names to use; None = every scene found under ``root`` (cambridge,
            7scenes) or in the files (label_csv, rosbag). Scene indices are the sorted names.
        train_split: split trained on (minus the calibration sequences of the 'calibration'
            split, see below).
        val_split: split the training loop reports on every ``validation.every_epochs`` ('val'
            on the command line resolves to it); it only monitors, nothing is fitted on it.
        test_split: the split results are reported on; nothing may be fitted on it, so
            ``calibration_split`` must differ from it.
        calibration_split: split that everything fitted after training (the covariance and the
            error correlation of ``mspr-export``) comes from. :data:`CROSSFIT_SPLIT`
            ('crossfit') holds nothing out: the deployed run trains on every training sequence,
            and ``calibration_folds`` fold runs (``mspr-train`` trains them in
            ``RUN_DIR/crossfit/fold_<k>``) each leave out fold k of every scene's sequences
            and predict it, so each sequence's errors come from a model that never saw it
            (the default). :data:`CALIBRATION_SPLIT` ('calibration') is the
            ``calibration_sequences`` last training sequences of every scene, held out of
            training (one training run, but the deployed model misses those sequences); any
            other name is read from disk like ``train_split``.
        calibration_sequences: whole sequences per scene (the last ones in natural order,
            ``seq2`` before ``seq10``) held out of ``train_split`` for the 'calibration' split.
            A scene with no more sequences than this gives the contiguous last
            :data:`CALIBRATION_TAIL_FRACTION` of its frames instead (7-Scenes heads and
            Cambridge ShopFacade have one training sequence), with a warning. 0 holds nothing
            out (``calibration_split`` must then name another split).
        calibration_folds: folds K of the 'crossfit' split. Fold k of a scene is its training
            sequences i (natural order) with ``i % K == k``; a scene with fewer sequences than
            K is cut into K contiguous blocks of frames instead, with a warning. Each fold run
            trains on (K - 1) / K of the data with the full schedule, so the folds add about
            K - 1 times the deployed run's training time.
        label_files: label_csv only: split name -> CSV path.
        rotation: label_csv only: quaternion convention of the rows (see read_label_csv).
        bags: rosbag only: split name -> list of bag paths.
        image_topic, pose_topic, scene_topic: rosbag only: topics to read.
        camera: 'native' (default): images are read as stored, and each scene's training
            camera is what its images state (``mspr_training.training_camera``). 'reproject'
            (mixed-camera datasets): every image whose stated camera is not the training
            split's most common one is reprojected into that camera's pinhole before any
            transform, in every split (``mspr_training.datasets.apply_training_camera``); an
            image that states no camera is then an error.
        num_workers: DataLoader worker processes for image decoding.
    """

    format: str = 'cambridge'
    root: str | None = None
    scenes: list[str] | None = None
    train_split: str = 'train'
    val_split: str = 'test'
    test_split: str = 'test'
    calibration_split: str = CROSSFIT_SPLIT
    calibration_sequences: int = 1
    calibration_folds: int = 2
    label_files: dict[str, str] = field(default_factory=dict)
    rotation: str = 'auto'
    bags: dict[str, list[str]] = field(default_factory=dict)
    image_topic: str = '/camera/image_raw'
    pose_topic: str | None = None
    scene_topic: str | None = None
    camera: str = 'native'
    num_workers: int = 4

    def __post_init__(self) -> None:
        """Validate the values."""
        _require(self.format in DATA_FORMATS, 'format',
                 f'must be one of {DATA_FORMATS}, got {self.format!r}')
        _require(self.camera in DATA_CAMERAS, 'camera',
                 f'must be one of {DATA_CAMERAS}, got {self.camera!r}')
        _require(self.rotation in LABEL_CSV_ROTATIONS, 'rotation',
                 f'must be one of {LABEL_CSV_ROTATIONS}, got {self.rotation!r}')
        _require(self.num_workers >= 0, 'num_workers', f'must be >= 0, got {self.num_workers}')
        _require(self.calibration_sequences >= 0, 'calibration_sequences',
                 f'must be >= 0, got {self.calibration_sequences}')
        _require(self.calibration_folds >= 2, 'calibration_folds',
                 f'must be >= 2 (each fold run leaves one fold out), got '
                 f'{self.calibration_folds}')
        _require(self.calibration_split != self.test_split, 'calibration_split',
                 f'must differ from test_split ({self.test_split!r}): a covariance fitted to '
                 'the errors it is judged on is not an honest one')
        _require(self.calibration_split != self.train_split, 'calibration_split',
                 f'must differ from train_split ({self.train_split!r}): the training errors '
                 'understate the errors on unseen images')
        _require(self.calibration_split != CALIBRATION_SPLIT or self.calibration_sequences > 0,
                 'calibration_sequences', f'must be >= 1 when calibration_split is '
                 f'{CALIBRATION_SPLIT!r} (the held-out training sequences)')
        if self.scenes is not None:
            _require(len(self.scenes) > 0 and len(set(self.scenes)) == len(self.scenes),
                     'scenes', f'must be a non-empty list of distinct names, got {self.scenes}')


@dataclass
class OptimConfig:
    """Adam with coupled L2 weight decay (torch.optim.Adam), as the paper.

    Attributes:
        batch_size: the global batch (summed over all data-parallel processes, so a recipe
            means the same thing on 1 or N GPUs; it must be divisible by the process count).
    """

    lr: float = 1e-4
    eps: float = 1e-10
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    batch_size: int = 8

    def __post_init__(self) -> None:
        """Validate the values."""
        _require(self.lr > 0, 'lr', f'must be > 0, got {self.lr}')
        _require(self.eps > 0, 'eps', f'must be > 0, got {self.eps}')
        _require(self.weight_decay >= 0, 'weight_decay',
                 f'must be >= 0, got {self.weight_decay}')
        _require(all(0 <= beta < 1 for beta in self.betas), 'betas',
                 f'must lie in [0, 1), got {list(self.betas)}')
        _require(self.batch_size >= 1, 'batch_size', f'must be >= 1, got {self.batch_size}')


@dataclass
class LossConfig:
    """Pose loss weighting (docs/paper.md section 2).

    Attributes:
        learnable: Kendall-style learned weights ``l_x exp(-s_x) + s_x + l_q exp(-s_q) + s_q``
            (True) or fixed ``s_x l_x + s_q l_q`` (False).
        s_x, s_q: initial (learnable) or fixed weights.
        lambda_aux: weight of the QKA loss (0 disables it: the MS-Transformer baseline).
    """

    learnable: bool = True
    s_x: float = 0.0
    s_q: float = -3.0
    lambda_aux: float = 0.1

    def __post_init__(self) -> None:
        """Validate the values."""
        _require(self.lambda_aux >= 0, 'lambda_aux', f'must be >= 0, got {self.lambda_aux}')
        if not self.learnable:
            _require(self.s_x >= 0, 's_x', f'a fixed weight must be >= 0, got {self.s_x}')
            _require(self.s_q >= 0, 's_q', f'a fixed weight must be >= 0, got {self.s_q}')


@dataclass
class ScheduleConfig:
    """Epochs and StepLR (stepped once per epoch)."""

    epochs: int = 30
    step_size: int = 10
    gamma: float = 0.1

    def __post_init__(self) -> None:
        """Validate the values."""
        _require(self.epochs >= 1, 'epochs', f'must be >= 1, got {self.epochs}')
        _require(self.step_size >= 1, 'step_size', f'must be >= 1, got {self.step_size}')
        _require(0 < self.gamma <= 1, 'gamma', f'must lie in (0, 1], got {self.gamma}')


@dataclass
class AugmentationConfig:
    """Input geometry and the training augmentation (docs/paper.md section 4.1).

    Attributes:
        enabled: random crop + colour jitter (True) or the test transform (False).
        resize: shorter image side before cropping.
        crop: square crop size fed to the network.
        brightness, contrast, saturation, hue: ColorJitter strengths.
        mean, std: normalisation statistics.
    """

    enabled: bool = True
    resize: int = 256
    crop: int = 224
    brightness: float = 0.5
    contrast: float = 0.5
    saturation: float = 0.5
    hue: float = 0.2
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        """Validate the values."""
        _require(self.resize >= 1, 'resize', f'must be >= 1, got {self.resize}')
        _require(1 <= self.crop <= self.resize, 'crop',
                 f'must lie in [1, resize={self.resize}], got {self.crop}')
        for name in ('brightness', 'contrast', 'saturation'):
            _require(getattr(self, name) >= 0, name, f'must be >= 0, got {getattr(self, name)}')
        _require(0 <= self.hue <= 0.5, 'hue', f'must lie in [0, 0.5], got {self.hue}')
        _require(all(value > 0 for value in self.std), 'std', f'must be > 0, got {self.std}')

    def preprocessing(self) -> PreprocessingConfig:
        """Return the evaluation preprocessing these settings imply (stored in the bundle)."""
        return PreprocessingConfig(resize=self.resize, crop=self.crop, mean=self.mean,
                                   std=self.std)


@dataclass
class SamplingConfig:
    """Order of the training images.

    Attributes:
        balanced_scenes: MS-Transformer's ``equalize_scenes``: an epoch has
            ``max_scene_count * S`` draws and every scene is about equally represented.
        shuffle: shuffle each epoch (False only for debugging).
    """

    balanced_scenes: bool = False
    shuffle: bool = True


@dataclass
class FreezeConfig:
    """Which parameters train (docs/paper.md section 4.3, the Cambridge fine-tune).

    Attributes:
        trainable: dotted module paths whose parameters keep gradients (e.g.
            ``[regressor_head_t]``); None trains every parameter (a frozen backbone stays
            frozen either way).
        frozen_eval: parts whose parameters are all frozen (a frozen backbone, the branches
            the fine-tune leaves alone) run in eval mode with their dropout, as the paper runs
            its frozen transformers; trained parts keep dropout and stochastic depth on.
    """

    trainable: list[str] | None = None
    frozen_eval: bool = True

    def __post_init__(self) -> None:
        """Validate the values."""
        if self.trainable is not None:
            _require(len(self.trainable) > 0, 'trainable',
                     'must name at least one parameter prefix, or be null to train all')


@dataclass
class FeatureCacheConfig:
    """Cached backbone maps (only valid with a frozen backbone in eval mode).

    Attributes:
        mode: 'auto' caches whenever it is valid, 'on' requires it (error otherwise), 'off'.
        on_disk: keep the cache in the run folder so a second run reuses it.
        augmented_views: maps kept per training image. 1: the test transform only (then
            ``augmentation.enabled`` must be false). K > 1: view 0 is the test transform and
            views 1..K-1 are seeded draws of the training augmentation (random crop and
            ColorJitter of the ``augmentation`` section, which must be enabled); every epoch
            each draw picks one view from its draw seed, so the frozen-backbone recipe sees
            changes of light without running the backbone again, and resume stays exact.
            Validation maps always use the test transform.
    """

    mode: str = 'auto'
    on_disk: bool = True
    augmented_views: int = 1

    def __post_init__(self) -> None:
        """Validate the values."""
        _require(self.mode in FEATURE_CACHE_MODES, 'mode',
                 f'must be one of {FEATURE_CACHE_MODES}, got {self.mode!r}')
        _require(self.augmented_views >= 1, 'augmented_views',
                 f'must be >= 1, got {self.augmented_views}')


@dataclass
class CheckpointConfig:
    """When checkpoints are written and where training starts from.

    Attributes:
        every_epochs: write after every N completed epochs (0: only at the end).
        every_iters: also write every N iterations, mid-epoch included (0: never).
        keep_iter_checkpoints: how many mid-epoch checkpoints to keep (older ones are deleted).
        init_from: model weights to start from (a checkpoint file or a run folder, whose latest
            checkpoint is used), e.g. the phase-1 run for the Cambridge fine-tune.
    """

    every_epochs: int = 10
    every_iters: int = 0
    keep_iter_checkpoints: int = 2
    init_from: str | None = None

    def __post_init__(self) -> None:
        """Validate the values."""
        for name in ('every_epochs', 'every_iters'):
            _require(getattr(self, name) >= 0, name, f'must be >= 0, got {getattr(self, name)}')
        _require(self.keep_iter_checkpoints >= 1, 'keep_iter_checkpoints',
                 f'must be >= 1, got {self.keep_iter_checkpoints}')


@dataclass
class ValidationConfig:
    """Validation during training and the metrics' recall thresholds.

    Attributes:
        every_epochs: evaluate on ``data.val_split`` after every N epochs (0: only at the end
            when ``at_end``).
        at_end: evaluate once after the last epoch.
        recall_thresholds: (metres, degrees) pairs for the localisation recall.
    """

    every_epochs: int = 0
    at_end: bool = True
    recall_thresholds: list[tuple[float, float]] = field(
        default_factory=lambda: [(0.25, 2.0), (0.5, 5.0), (5.0, 10.0)])

    def __post_init__(self) -> None:
        """Validate the values."""
        _require(self.every_epochs >= 0, 'every_epochs',
                 f'must be >= 0, got {self.every_epochs}')
        _require(all(m > 0 and d > 0 for m, d in self.recall_thresholds), 'recall_thresholds',
                 f'every (metres, degrees) pair must be > 0, got {self.recall_thresholds}')


@dataclass
class LoggingConfig:
    """Progress output, TensorBoard and the CSV log.

    Attributes:
        every_iters: write iteration rows (CSV, TensorBoard) every N iterations.
        tensorboard: write TensorBoard event files to ``<out>/tensorboard``.
        progress: show a tqdm progress bar (rank 0).
    """

    every_iters: int = 10
    tensorboard: bool = True
    progress: bool = True

    def __post_init__(self) -> None:
        """Validate the values."""
        _require(self.every_iters >= 1, 'every_iters', f'must be >= 1, got {self.every_iters}')


@dataclass
class SeedConfig:
    """Random seeds (the paper: torch 0, numpy 2)."""

    torch: int = 0
    numpy: int = 2
    python: int = 0
    sampler: int = 0


@dataclass
class TrainConfig:
    """Everything one training run needs (see the YAML files in ``mspr_training/configs``).

    Attributes:
        device: 'auto' (CUDA when available, else CPU), 'cpu', 'cuda' or 'cuda:N'.
        amp: mixed precision (autocast float16 + GradScaler) on CUDA; ignored on CPU. Off by
            default: the official code trains in float32; mixed precision is an explicit
            choice whose effect on accuracy has to be measured on the GPU at hand.
        deterministic: ``torch.use_deterministic_algorithms(True, warn_only=True)`` and no
            cuDNN benchmarking.
        source: the file the config was read from (not part of the YAML).
    """

    model: ModelConfig
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    augmentation: AugmentationConfig = field(default_factory=AugmentationConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    freeze: FreezeConfig = field(default_factory=FreezeConfig)
    feature_cache: FeatureCacheConfig = field(default_factory=FeatureCacheConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    seed: SeedConfig = field(default_factory=SeedConfig)
    device: str = 'auto'
    amp: bool = False
    deterministic: bool = True
    source: str = field(default='<dict>', compare=False)

    def __post_init__(self) -> None:
        """Validate the values."""
        _require(bool(re.fullmatch(r'auto|cpu|cuda(:\d+)?', self.device)), 'device',
                 f'must be {DEVICES_HELP}, got {self.device!r}')
        views = self.feature_cache.augmented_views
        _require(views == 1 or self.augmentation.enabled, 'feature_cache.augmented_views',
                 f'{views} augmented views need augmentation.enabled: true (the views are '
                 'draws of the training augmentation)')

    def to_dict(self) -> dict[str, Any]:
        """Return a YAML/JSON-ready nested dict (tuples become lists; ``source`` omitted)."""
        data = {}
        for spec in dataclasses.fields(self):
            if spec.name == 'source':
                continue
            value = getattr(self, spec.name)
            data[spec.name] = value.to_dict() if spec.name == 'model' else _plain(value)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = '<dict>') -> 'TrainConfig':
        """Build and validate from a nested dict; errors name ``source`` and the key."""
        return _build_train_config(copy.deepcopy(dict(data)), source, None)


def _plain(value: Any) -> Any:
    """Return ``value`` with dataclasses as dicts and tuples as lists."""
    if dataclasses.is_dataclass(value):
        return {spec.name: _plain(getattr(value, spec.name))
                for spec in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    return value


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------

class _Locator:
    """Maps dotted keys to their line in a YAML file, and names overridden keys."""

    def __init__(self, source: str, root: yaml.Node | None,
                 overridden: dict[str, str]) -> None:
        """Locate keys of ``source`` (YAML node tree ``root``) and of the overrides."""
        self.source = source
        self.root = root
        self.overridden = overridden  # dotted key -> the override's raw value text

    def where(self, key: str) -> str:
        """Return ``file:line`` of ``key`` (or its closest enclosing key), or the override."""
        if key in self.overridden:
            return f'--set {key}'
        node, line = self.root, None
        for part in key.split('.') if key else []:
            if not isinstance(node, yaml.MappingNode):
                break
            match = next(((k, v) for k, v in node.value
                          if isinstance(k, yaml.ScalarNode) and k.value == part), None)
            if match is None:
                break
            line = match[0].start_mark.line + 1
            node = match[1]
        return f'{self.source}:{line}' if line is not None else self.source

    def error(self, key: str, message: str) -> ConfigError:
        """Return a ConfigError for ``key``."""
        label = f'{key}: ' if key else ''
        return ConfigError(f'{self.where(key)}: {label}{message}')


def _type_name(hint: Any) -> str:
    """Return a readable name of a type hint."""
    return getattr(hint, '__name__', None) or str(hint).replace('typing.', '')


def _convert(value: Any, hint: Any, key: str, locator: _Locator) -> Any:
    """Check ``value`` against ``hint`` and convert it (lists to tuples, ints to floats)."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [arg for arg in args if arg is not type(None)]
        last_error = None
        for option in options:
            try:
                return _convert(value, option, key, locator)
            except ConfigError as error:
                last_error = error
        raise last_error
    if hint is ModelConfig:
        return _build_model_config(value, key, locator)
    if dataclasses.is_dataclass(hint):
        return _build_section(hint, value, key, locator)
    if hint is bool:
        if not isinstance(value, bool):
            raise locator.error(key, f'must be true or false, got {value!r}')
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise locator.error(key, f'must be an integer, got {value!r}')
        return value
    if hint is float:
        # PyYAML reads 1e-4 (no dot) as a string; accept any string float() parses.
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise locator.error(key, f'must be a number, got {value!r}') from None
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not math.isfinite(value):
            raise locator.error(key, f'must be a finite number, got {value!r}')
        return float(value)
    if hint is str:
        if isinstance(value, bool) and key in locator.overridden:
            # --set feature_cache.mode=on means the string, not YAML's boolean.
            value = locator.overridden[key]
        if isinstance(value, bool):
            raise locator.error(key, f'must be a string, got {value!r} (YAML reads unquoted '
                                'on/off/yes/no as booleans: quote the value)')
        if not isinstance(value, str) or not value:
            raise locator.error(key, f'must be a non-empty string, got {value!r}')
        return value
    if origin is list:
        if not isinstance(value, list):
            raise locator.error(key, f'must be a list, got {value!r}')
        return [_convert(item, args[0], f'{key}[{i}]', locator) for i, item in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise locator.error(key, f'must be a list of {len(args)} values, got {value!r}')
        return tuple(_convert(item, arg, f'{key}[{i}]', locator)
                     for i, (item, arg) in enumerate(zip(value, args)))
    if origin is dict:
        if not isinstance(value, dict):
            raise locator.error(key, f'must be a mapping, got {value!r}')
        return {_convert(k, args[0], key, locator): _convert(v, args[1], f'{key}.{k}', locator)
                for k, v in value.items()}
    raise locator.error(key, f'unsupported type {_type_name(hint)}')


def _build_section(cls: type, data: Any, key: str, locator: _Locator) -> Any:
    """Build dataclass ``cls`` from mapping ``data`` found at dotted ``key``."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise locator.error(key, f'must be a mapping, got {data!r}')
    hints = typing.get_type_hints(cls)
    specs = {spec.name: spec for spec in dataclasses.fields(cls) if spec.name != 'source'}
    unknown = sorted(str(name) for name in data if name not in specs)
    if unknown:
        prefix = f'{key}.' if key else ''
        raise locator.error(f'{prefix}{unknown[0]}',
                            f'unknown key; known keys of {key or "the config"}: '
                            f'{sorted(specs)}')
    values = {}
    for name, spec in specs.items():
        child = f'{key}.{name}' if key else name
        if name not in data:
            if spec.default is dataclasses.MISSING \
                    and spec.default_factory is dataclasses.MISSING:
                raise locator.error(child, 'required key is missing')
            continue
        values[name] = _convert(data[name], hints[name], child, locator)
    try:
        return cls(**values)
    except FieldError as error:
        child = f'{key}.{error.name}' if key else error.name
        raise locator.error(child, str(error)) from None


def _build_model_config(data: Any, key: str, locator: _Locator) -> ModelConfig:
    """Build the model section with mspr_ros's own validation, pointing at the bad key."""
    if not isinstance(data, Mapping):
        raise locator.error(key, f'must be a mapping, got {data!r}')
    try:
        return ModelConfig.from_dict(data)
    except (TypeError, ValueError) as error:
        message = str(error)
        match = re.search(r'ModelConfig\.(\w+)', message) or re.search(r"keys \['(\w+)'", message)
        raise locator.error(f'{key}.{match.group(1)}' if match else key, message) from None


def _build_train_config(data: dict[str, Any], source: str, root: yaml.Node | None,
                        overridden: dict[str, str] | None = None) -> TrainConfig:
    """Build a TrainConfig from a raw dict; errors located through the YAML node tree."""
    config = _build_section(TrainConfig, data, '', _Locator(source, root, overridden or {}))
    config.source = source
    return config


def parse_override(text: str) -> tuple[str, Any]:
    """Split ``key.sub=value`` into the dotted key and the YAML-parsed value.

    Raises:
        ConfigError: when there is no ``=`` or the key is empty or malformed.
    """
    key, sep, raw = text.partition('=')
    key = key.strip()
    if not sep or not re.fullmatch(r'[A-Za-z_]\w*(\.[A-Za-z_]\w*)*', key):
        raise ConfigError(f'--set {text!r}: expected key.sub=value')
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as error:
        raise ConfigError(f'--set {text!r}: value is not valid YAML: {error}') from None
    return key, value


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, str]:
    """Apply ``key.sub=value`` overrides to ``data`` in place.

    Returns:
        dotted key -> raw value text, for error messages and string fields.
    """
    keys = {}
    for text in overrides:
        key, value = parse_override(text)
        node = data
        parts = key.split('.')
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f'--set {text!r}: {".".join(parts[:depth + 1])} is not a '
                                  'section')
            node = child
        node[parts[-1]] = value
        keys[key] = text.partition('=')[2].strip()
    return keys


def resolve_config_path(name: str | Path) -> Path:
    """Return ``name`` as a file, or the bundled config of that name (``synth_demo.yaml``)."""
    path = Path(name)
    if path.is_file():
        return path
    bundled = bundled_config(path.name)
    if bundled.is_file() and len(path.parts) == 1:
        return bundled
    raise ConfigError(f'{name}: config file does not exist (bundled configs: '
                      f'{", ".join(sorted(p.name for p in CONFIG_DIR.glob("*.yaml")))})')


def bundled_config(name: str) -> Path:
    """Return the path of a config shipped in ``mspr_training/configs`` (``.yaml`` optional)."""
    if not name.endswith('.yaml'):
        name = f'{name}.yaml'
    return CONFIG_DIR / name


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> TrainConfig:
    """Read a YAML config (a path or a bundled config's name) and apply overrides.

    Raises:
        ConfigError: unreadable file, invalid YAML, unknown or missing keys, wrong types or
            invalid values; the message names the file and line or the ``--set`` override.
    """
    path = resolve_config_path(path)
    source = str(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise ConfigError(f'{source}: cannot read config: {error}') from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f'{source}: invalid YAML: {error}') from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f'{source}: the config must be a mapping of sections, got '
                          f'{type(data).__name__}')
    overridden = apply_overrides(data, overrides)
    model = data.get('model')
    if isinstance(model, dict) and 'backbone_weights' in model \
            and model['backbone_weights'] is None:
        # null used to mean a silently random backbone; random init must be asked for.
        raise _Locator(source, root, overridden).error(
            'model.backbone_weights', "null is not a choice: say 'imagenet', a weights file, or "
            "none (a random backbone, e.g. when checkpoint.init_from supplies every weight)")
    return _build_train_config(data, source, root, overridden)


def dump_config(config: TrainConfig, path: str | Path) -> None:
    """Write ``config`` as YAML (the resolved config of a run)."""
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
