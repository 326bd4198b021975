"""Training throughput of the paper configuration, and whether data loading keeps up.

The paper's training set-up (``7scenes_ours``: EfficientNet-B0, d=256, 6/6 + 6/6 layers, batch
8, 224x224, QKA on, Adam) is built by the real trainer (``mspr_training.train.Trainer``) on
rendered 640x480 PNG images on disk, read through its own DataLoader with the paper's training
transform (resize 256, random crop 224, colour jitter; ``--num-workers`` processes). The real
``mspr_training.engine.train_one_epoch`` then runs ``--iterations`` steps after
``--warmup`` ones, while this script records, per iteration:

- loader wait: how long the step waited for its batch (0 when the workers are ahead);
- step: forward, losses, backward and the Adam update;

and, separately, the cost of preparing one batch in a single process (decode + transform +
collate): with W workers the loader keeps up when ``prepare / W`` is below the step time.

The CPU run uses few iterations (~1.5 images/s on 2 cores); with CUDA a longer GPU run follows
(autocast fp16 as the config says). B0's ImageNet weights are not available offline: the
backbone starts from random weights with denormal floats flushed (as ``model_speed.py``), which
keeps the CPU timing representative of trained weights.

Usage: ``python benchmarks/throughput.py [--quick | --smoke] [--num-workers N]``
"""
import argparse
from dataclasses import dataclass
import itertools
import os
import sys
import tempfile
import time
from typing import Any, Iterator, List, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import default_collate

from common.cli import add_common_arguments, begin, parse_size, run_mode
from common.models import model_config, parameter_count
from common.results import save_results, WORK_DIR
from common.stats import summarise, Summary
from mspr_training.config import load_config
from mspr_training.engine import IterationInfo, train_one_epoch
from mspr_training.synth import generate
from mspr_training.train import set_train_mode, Trainer

NAME = 'throughput'
PAPER_CONFIG = '7scenes_ours'
# (warm-up, measured) iterations per mode and device.
ITERATIONS = {'full': {'cpu': (2, 10), 'cuda': (10, 100)},
              'quick': {'cpu': (1, 4), 'cuda': (5, 30)},
              'smoke': {'cpu': (1, 2), 'cuda': (1, 2)}}


@dataclass
class ThroughputResult:
    """Training speed on one device.

    Attributes:
        device: 'cpu' or 'cuda'; ``precision`` 'fp32' or 'fp16 autocast'.
        batch_size, num_workers, iterations: the run.
        images_per_s: batch size over the mean iteration time (wait + step).
        step_ms: forward + backward + update per iteration.
        loader_wait_ms: time the step waited for its batch.
        loader_wait_fraction: total wait over total iteration time.
        prepare_batch_ms: one batch decoded, transformed and collated in one process.
        loader_keeps_up: ``prepare_batch_ms / max(num_workers, 1)`` below the median step.
    """

    device: str
    precision: str
    batch_size: int
    num_workers: int
    iterations: int
    images_per_s: float
    step_ms: Summary
    loader_wait_ms: Summary
    loader_wait_fraction: float
    prepare_batch_ms: Summary
    loader_keeps_up: bool


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    add_common_arguments(parser)
    parser.add_argument('--num-workers', type=int, default=None,
                        help='DataLoader workers (default: the usable cores; smoke 1)')
    parser.add_argument('--batch-size', type=int, default=None,
                        help='batch size (default: the paper config, 8; smoke 2)')
    parser.add_argument('--iterations', type=int, default=None, help='measured iterations')
    parser.add_argument('--warmup', type=int, default=None, help='warm-up iterations')
    parser.add_argument('--image-size', type=parse_size, default=None,
                        help='WIDTHxHEIGHT of the rendered images (default 640x480; smoke '
                             '160x120)')
    parser.add_argument('--skip-cuda', action='store_true', help='CPU only')
    args = parser.parse_args(argv)
    mode = run_mode(args)
    args.image_size = args.image_size or ((160, 120) if mode == 'smoke' else (640, 480))
    if args.num_workers is None:
        args.num_workers = 1 if mode == 'smoke' else len(os.sched_getaffinity(0))
    if args.num_workers < 0:
        parser.error('--num-workers must be >= 0')
    return args


def config_overrides(args: argparse.Namespace, mode: str, device: str) -> List[str]:
    """Return the ``--set`` overrides turning the paper config into this benchmark's run.

    Only data location, bookkeeping (no validation, checkpoints, TensorBoard) and, for smoke
    runs, the model size change; optimizer, loss, transform and sampling stay the paper's.
    """
    overrides = ['data.format=cambridge', 'data.scenes=null', 'model.num_scenes=3',
                 'model.backbone_weights=none', f'data.num_workers={args.num_workers}',
                 'validation.every_epochs=0', 'validation.at_end=false',
                 'checkpoint.every_epochs=0', 'logging.tensorboard=false',
                 'logging.progress=false', f'device={device}']
    if mode == 'smoke':
        tiny = model_config('tiny').to_dict()
        tiny['backbone_weights'] = 'none'
        overrides += [f'model.{key}={"null" if value is None else value}'
                      for key, value in tiny.items()]
        overrides.append('optim.batch_size=2')
    if args.batch_size is not None:
        overrides.append(f'optim.batch_size={args.batch_size}')
    return overrides


def rendered_dataset(args: argparse.Namespace, images_needed: int) -> Any:
    """Render (or reuse) a 3-scene world with at least ``images_needed`` training images."""
    per_scene = max(8, -(-images_needed // 3))
    folder = WORK_DIR / f'throughput_world_{args.image_size[0]}x{args.image_size[1]}'
    manifest = generate(folder, formats=('cambridge',), num_scenes=3, train_frames=per_scene,
                        test_frames=2, size=args.image_size, train_sequences=1,
                        test_sequences=1)
    print(f"{'reused' if manifest.cached else 'rendered'} {3 * per_scene} training images "
          f'in {folder}', flush=True)
    return folder / 'cambridge'


class TimedBatches:
    """Yields ``count`` batches of a loader, recording how long each ``next()`` waited."""

    def __init__(self, loader: Any, count: int) -> None:
        """Wrap ``loader``; ``count`` batches will be drawn."""
        self.loader = loader
        self.count = count
        self.wait_s: List[float] = []
        self.yielded_at: List[float] = []

    def __iter__(self) -> Iterator[Any]:
        """Draw the batches, timing each wait."""
        iterator = iter(self.loader)
        for _ in range(self.count):
            started = time.perf_counter()
            batch = next(iterator)
            now = time.perf_counter()
            self.wait_s.append(now - started)
            self.yielded_at.append(now)
            yield batch


def prepare_batch_ms(trainer: Trainer, batches: int) -> Summary:
    """Return the single-process cost of making one training batch (decode, transform, collate).

    Uses the trainer's own dataset and sampler draws, so the images and augmentations are the
    ones training reads.
    """
    dataset = trainer.train_loader.dataset
    draws = list(itertools.islice(iter(trainer.sampler), batches * trainer.batch_size))
    durations = []
    for start in range(0, len(draws), trainer.batch_size):
        started = time.perf_counter()
        default_collate([dataset[draw] for draw in draws[start:start + trainer.batch_size]])
        durations.append(1e3 * (time.perf_counter() - started))
    return summarise(durations)


def iteration_counts(args: argparse.Namespace, mode: str, device: str) -> tuple:
    """Return (warm-up, measured) iterations on ``device``."""
    warmup, iterations = ITERATIONS[mode]['cuda' if device.startswith('cuda') else 'cpu']
    return (args.warmup if args.warmup is not None else warmup,
            args.iterations if args.iterations is not None else iterations)


def measure(device: str, args: argparse.Namespace, mode: str, root: Any,
            work: str) -> tuple:
    """Train ``warmup + iterations`` steps on ``device``; return (result, parameter count)."""
    warmup, iterations = iteration_counts(args, mode, device)
    cfg = load_config(PAPER_CONFIG, config_overrides(args, mode, device))
    trainer = Trainer(cfg, f'{work}/{device}', str(root), None)
    if trainer.uses_feature_cache:
        raise RuntimeError('the throughput run must train the backbone (no feature cache)')
    if len(trainer.sampler) < (warmup + iterations) * trainer.batch_size:
        raise RuntimeError(f'{len(trainer.sampler)} training images are too few for '
                           f'{warmup + iterations} batches of {trainer.batch_size}')
    prepare = prepare_batch_ms(trainer, max(2, min(iterations, 5)))
    trainer.sampler.set_epoch(0)
    set_train_mode(trainer.model, cfg.freeze.frozen_eval)
    trainer.criterion.train()
    batches = TimedBatches(trainer.train_loader, warmup + iterations)
    finished: List[float] = []

    def on_iteration(info: IterationInfo, totals: Any) -> None:
        finished.append(time.perf_counter())

    train_one_epoch(trainer.step_module, batches, trainer.optimizer, device=trainer.device,
                    epoch=0, iterations=warmup + iterations, scaler=trainer.scaler,
                    amp=trainer.amp, on_iteration=on_iteration)
    step_s = np.asarray(finished) - np.asarray(batches.yielded_at)
    wait_s = np.asarray(batches.wait_s)
    step_s, wait_s = step_s[warmup:], wait_s[warmup:]
    step, wait = summarise(1e3 * step_s), summarise(1e3 * wait_s)
    result = ThroughputResult(
        device=device, precision='fp16 autocast' if trainer.amp else 'fp32',
        batch_size=trainer.batch_size, num_workers=cfg.data.num_workers,
        iterations=iterations,
        images_per_s=trainer.batch_size / float(np.mean(step_s + wait_s)),
        step_ms=step, loader_wait_ms=wait,
        loader_wait_fraction=float(wait_s.sum() / (step_s + wait_s).sum()),
        prepare_batch_ms=prepare,
        loader_keeps_up=prepare.p50 / max(cfg.data.num_workers, 1) < step.p50)
    return result, parameter_count(trainer.model), cfg


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the benchmark; return the exit status."""
    args = parse_args(argv)
    mode, machine, notes = begin(args)
    # Random B0 weights give denormal activations that trained weights do not (see docstring).
    torch.set_flush_denormal(True)
    devices = ['cpu']
    if torch.cuda.is_available() and not args.skip_cuda:
        devices.append('cuda')
    else:
        notes.append('CUDA skipped: ' + ('--skip-cuda' if args.skip_cuda
                                         else 'no CUDA device on this machine'))
    if mode == 'smoke':
        notes.append('smoke run: the tiny test model, batch 2; the figures mean nothing')
    else:
        notes.append('B0 backbone from random weights with denormals flushed (no offline '
                     'ImageNet B0 weights); the step cost does not depend on the weight values '
                     'otherwise')
    for note in notes:
        print(f'note: {note}')
    batches = max(sum(iteration_counts(args, mode, device)) for device in devices)
    root = rendered_dataset(args, batches * (args.batch_size or (2 if mode == 'smoke' else 8)))
    results, configs = [], {}
    with tempfile.TemporaryDirectory(prefix='mspr_throughput_') as work:
        for device in devices:
            print(f'training on {device} ...', flush=True)
            result, parameters, cfg = measure(device, args, mode, root, work)
            results.append(result)
            configs[device] = cfg.to_dict()
    print(f'\nmodel parameters {parameters:,}')
    print(f"{'device':<7}{'precision':<15}{'batch':>6}{'workers':>8}{'img/s':>8}"
          f"{'step p50':>10}{'wait p50':>10}{'wait %':>8}{'prepare p50':>13}  loader")
    for r in results:
        print(f'{r.device:<7}{r.precision:<15}{r.batch_size:>6}{r.num_workers:>8}'
              f'{r.images_per_s:>8.2f}{r.step_ms.p50:>10.0f}{r.loader_wait_ms.p50:>10.1f}'
              f'{100 * r.loader_wait_fraction:>7.1f}%{r.prepare_batch_ms.p50:>13.0f}  '
              f'{"keeps up" if r.loader_keeps_up else "BOTTLENECK"}')
    return save_results(
        args.out, NAME, mode, machine,
        settings={'threads': args.threads, 'config': PAPER_CONFIG,
                  'image_size': list(args.image_size), 'num_workers': args.num_workers,
                  'resolved_configs': configs, 'parameters': parameters},
        results={'devices': results}, notes=notes)


if __name__ == '__main__':
    sys.exit(main())
