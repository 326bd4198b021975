"""Speed of the NeurIPS 2024 fixes: inference latency and training-step cost.

Compares, side by side in one run and with interleaved timings (so load changes on a shared
machine hit both variants alike):

- inference at batch 1, 224x224, for both backbones: the MS-Transformer baseline (learned
  positional encoding) vs ours (fixed sine encoding); QKA is training-only and off here.
  On the CPU (``--threads``, default 2) and, when available, CUDA fp32 and fp16 autocast.
- one training step (forward, loss, backward, Adam) at batch 8 of the full paper configuration,
  without and with the QKA loss (lambda 0.1).

Both variants share every other setting (6/6 layers per branch, d 256, 8 heads), so the ratios
isolate the fixes. Expected: inference ratio ~1.0; QKA adds at most ~10 % to a training step.
Every figure is a median over interleaved iterations, of wall time and of this process's CPU
time. Writes ``results/model_speed.json`` (``model_speed.quick.json`` with ``--quick``; a smoke
run, tiny widths at 64x64, writes to the work folder).

Usage: ``python benchmarks/model_speed.py [--quick | --smoke] [--threads N] [--out FILE]``
"""
import argparse
from dataclasses import replace
import statistics
import sys
import time
from typing import Callable, Optional, Sequence

import torch

from common.cli import add_common_arguments, begin, run_mode
from common.models import parameter_count
from common.results import save_results
from mspr_ros.model.config import ModelConfig
from mspr_ros.model.losses import MultiScenePoseCriterion, PoseLoss
from mspr_ros.model.ms_transformer import build_model

NAME = 'model_speed'
NUM_SCENES = 7
IMAGE_SIZE = {'full': 224, 'quick': 224, 'smoke': 64}
# (inference iterations, warm-up), (training iterations, warm-up) per mode.
ITERATIONS = {'full': ((30, 5), (10, 2)), 'quick': ((5, 2), (2, 1)), 'smoke': ((1, 1), (1, 1))}
# A smoke run proves the script works: tiny widths, one layer per stage, batch 2.
SMOKE_MODEL = {'hidden_dim': 32, 'nheads': 4, 'dim_feedforward': 32, 'head_hidden': 32,
               'enc_layers_t': 1, 'dec_layers_t': 1, 'enc_layers_rot': 1, 'dec_layers_rot': 1}


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    add_common_arguments(parser)
    parser.add_argument('--batch', type=int, default=None,
                        help='training batch size (default 8; smoke 2)')
    parser.add_argument('--skip-cuda', action='store_true', help='CPU only')
    parser.add_argument('--skip-train', action='store_true', help='inference only')
    parser.add_argument('--train-device', choices=('cpu', 'cuda'), default=None,
                        help='device of the training-step comparison (default: cuda when '
                             'available, else cpu)')
    args = parser.parse_args(argv)
    args.batch = args.batch or (2 if run_mode(args) == 'smoke' else 8)
    return args


def synchronise(device: torch.device) -> None:
    """Wait for queued CUDA work so wall-clock timings are complete."""
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def interleaved_medians(runs: dict[str, Callable[[], None]], device: torch.device,
                        warmup: int, iterations: int) -> dict[str, dict[str, float]]:
    """Time each callable ``iterations`` times, alternating between them.

    Returns medians in ms per run name: ``wall`` (elapsed) and ``cpu`` (this process's CPU
    time over all threads; on a shared machine it is far less disturbed by other processes).
    """
    for run in runs.values():
        for _ in range(warmup):
            run()
    samples: dict[str, dict[str, list[float]]] = {name: {'wall': [], 'cpu': []}
                                                  for name in runs}
    for _ in range(iterations):
        for name, run in runs.items():
            synchronise(device)
            wall, cpu = time.perf_counter(), time.process_time()
            run()
            synchronise(device)
            samples[name]['wall'].append(1e3 * (time.perf_counter() - wall))
            samples[name]['cpu'].append(1e3 * (time.process_time() - cpu))
    return {name: {clock: statistics.median(values) for clock, values in clocks.items()}
            for name, clocks in samples.items()}


def paper_config(backbone: str, position_encoding: str, mode: str = 'full') -> ModelConfig:
    """Return the full paper configuration (weights irrelevant for timing: random init)."""
    config = ModelConfig(num_scenes=NUM_SCENES, backbone=backbone, backbone_weights=None,
                         position_encoding=position_encoding)
    return replace(config, **SMOKE_MODEL) if mode == 'smoke' else config


def inference_comparison(backbone: str, device: torch.device, fp16: bool, warmup: int,
                         iterations: int, mode: str) -> dict:
    """Return baseline vs ours forward latency (batch 1) and parameter counts."""
    models = {name: build_model(paper_config(backbone, pe, mode)).to(device).eval()
              for name, pe in (('baseline_learned_pe', 'learned'), ('ours_sine_pe', 'sine'))}
    size = IMAGE_SIZE[mode]
    image = torch.randn(1, 3, size, size, device=device)

    def forward(model: torch.nn.Module) -> Callable[[], None]:
        def run() -> None:
            with torch.inference_mode(), torch.autocast(device.type, dtype=torch.float16,
                                                        enabled=fp16):
                model(image)
        return run

    medians = interleaved_medians({name: forward(m) for name, m in models.items()}, device,
                                  warmup, iterations)
    row = {
        'backbone': backbone, 'device': str(device), 'precision': 'fp16' if fp16 else 'fp32',
        'latency_ms': medians,
        'ratio_ours_over_baseline': {
            clock: medians['ours_sine_pe'][clock] / medians['baseline_learned_pe'][clock]
            for clock in ('wall', 'cpu')},
        'parameters': {name: parameter_count(m) for name, m in models.items()},
    }
    print_inference_row(row)
    return row


def training_comparison(device: torch.device, batch: int, warmup: int,
                        iterations: int, mode: str) -> dict:
    """Return the median training-step time without and with the QKA loss."""
    torch.manual_seed(0)
    size = IMAGE_SIZE[mode]
    images = torch.randn(batch, 3, size, size, device=device)
    targets = {'position': torch.randn(batch, 3, device=device),
               'orientation': torch.randn(batch, 4, device=device),
               'scene': torch.randint(0, NUM_SCENES, (batch,), device=device)}
    cfg = paper_config('efficientnet_b0', 'sine', mode)

    def step_function(lambda_aux: float) -> Callable[[], None]:
        model = build_model(replace(cfg)).to(device).train()
        criterion = MultiScenePoseCriterion(PoseLoss.from_preset('7scenes'),
                                            lambda_aux=lambda_aux).to(device)
        optimizer = torch.optim.Adam([*model.parameters(), *criterion.parameters()], lr=1e-4,
                                     eps=1e-10, weight_decay=1e-4)

        def run() -> None:
            optimizer.zero_grad(set_to_none=True)
            outputs = model(images, scene=targets['scene'], need_qka=lambda_aux > 0)
            criterion(outputs, targets)['loss'].backward()
            optimizer.step()
        return run

    medians = interleaved_medians({'without_qka': step_function(0.0),
                                   'with_qka': step_function(0.1)}, device, warmup, iterations)
    return {'device': str(device), 'batch': batch, 'config': cfg.to_dict(),
            'step_ms': medians,
            'qka_overhead': {clock: medians['with_qka'][clock] / medians['without_qka'][clock]
                             - 1.0 for clock in ('wall', 'cpu')}}


INFERENCE_HEADER = (f"{'backbone':<20}{'device':<8}{'prec':<6}{'clock':<6}{'baseline':>10}"
                    f"{'ours':>10}{'ratio':>8}{'params base':>14}{'params ours':>14}")


def print_inference_row(row: dict) -> None:
    """Print one inference comparison (wall and CPU-time lines) as soon as it is measured."""
    latency, params = row['latency_ms'], row['parameters']
    for clock in ('wall', 'cpu'):
        print(f"{row['backbone']:<20}{row['device']:<8}{row['precision']:<6}{clock:<6}"
              f"{latency['baseline_learned_pe'][clock]:>10.1f}"
              f"{latency['ours_sine_pe'][clock]:>10.1f}"
              f"{row['ratio_ours_over_baseline'][clock]:>8.3f}"
              f"{params['baseline_learned_pe']:>14,}{params['ours_sine_pe']:>14,}", flush=True)


def print_training(training: dict) -> None:
    """Print the training-step comparison."""
    print(f"\nTraining step, batch {training['batch']}, paper config, {training['device']} "
          '(median ms)')
    for clock in ('wall', 'cpu'):
        step = training['step_ms']
        print(f"{clock:<5} without QKA {step['without_qka'][clock]:>10.1f}   with QKA "
              f"{step['with_qka'][clock]:>10.1f}   QKA overhead "
              f"{100 * training['qka_overhead'][clock]:+.1f} %", flush=True)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the benchmark, print and write its results; return the exit status."""
    args = parse_args(argv)
    mode, machine, notes = begin(args)
    # Random-init B0 activations underflow to denormal floats, which the CPU handles ~10x
    # slower; trained weights do not do this, so flushing keeps timings representative.
    torch.set_flush_denormal(True)
    cuda = torch.cuda.is_available() and not args.skip_cuda
    (inference_iterations, inference_warmup), (train_iterations, train_warmup) = \
        ITERATIONS[mode]
    notes.append('random initialisation with denormals flushed: timing does not depend on the '
                 'weights')
    if mode == 'smoke':
        notes.append('smoke run: tiny widths at 64x64; the figures mean nothing')
    if not cuda:
        notes.append('CUDA skipped: ' + ('--skip-cuda' if args.skip_cuda
                                         else 'no CUDA device on this machine'))
    for note in notes:
        print(f'note: {note}')
    results: dict = {'inference': []}
    print('\nInference, batch 1 (median ms; cpu = process CPU time, all threads)')
    print(INFERENCE_HEADER)
    settings = [(torch.device('cpu'), False)]
    if cuda:
        settings += [(torch.device('cuda'), False), (torch.device('cuda'), True)]
    for device, fp16 in settings:
        for backbone in ('efficientnet_b0', 'efficientnet_lite0'):
            results['inference'].append(inference_comparison(
                backbone, device, fp16, inference_warmup, inference_iterations, mode))
    train_device = None
    if not args.skip_train:
        train_device = torch.device(args.train_device or ('cuda' if cuda else 'cpu'))
        results['training'] = training_comparison(train_device, args.batch, train_warmup,
                                                  train_iterations, mode)
        print_training(results['training'])
    return save_results(
        args.out, NAME, mode, machine,
        settings={'threads': args.threads, 'image_size': IMAGE_SIZE[mode],
                  'inference_iterations': inference_iterations,
                  'inference_warmup': inference_warmup, 'train_iterations': train_iterations,
                  'train_warmup': train_warmup, 'batch': args.batch,
                  'train_device': str(train_device) if train_device else None,
                  'num_scenes': NUM_SCENES, 'smoke_model': SMOKE_MODEL if mode == 'smoke' else {},
                  'cuda': cuda},
        results=results, notes=notes)


if __name__ == '__main__':
    sys.exit(main())
