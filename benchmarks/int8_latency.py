"""Batch-1 CPU latency of the int8 graph (issue 27): torch eager fp32, ONNX Runtime fp32 and int8.

For each model size the seeded model (random initialisation, ``backbone_weights`` none) is
exported as ``mspr-export --onnx --quantize int8`` does: the float graph
(``mspr_ros.onnx_backend.export_onnx``), then the static int8 QDQ graph
(``mspr_training.quantize.quantize_int8``: per-channel int8 weights, uint8 activations whose
ranges are calibrated on rendered frames, the pose heads' last layers in float), checked against
the float graph as the exporter checks it. One preprocessed rendered frame then goes through:

- ``torch``: the model as built under ``torch.inference_mode()``, fp32 (the Localizer's torch
  path when issue 27 set its goals against it; the Localizer now runs ``inference_model``'s
  copy, which ``torch_latency.py`` times against this one);
- ``onnxruntime``: the float graph's ``OnnxSession`` (the Localizer's onnxruntime path);
- ``int8``: the int8 graph's ``OnnxSession`` (what an int8 bundle runs).

All with ``--threads`` intra-op threads, interleaved round by round (the order rotating), so
load changes on a shared machine hit every variant alike. Reported per size: p50/p95 of each,
the ratios to torch eager (goal of issue 27: int8 at most 0.35 of torch eager fp32 on the paper
model), the largest output differences int8 vs float, and the CPU's integer dot-product support
that decides which kernels ran (``quantize.int8_kernels``). Random weights: the latency does not
depend on them; what int8 costs in accuracy is measured on trained models elsewhere.

Sizes as ``onnx_latency.py``: 'demo', 'paper', and 'tiny' for ``--smoke``.

Usage: ``python benchmarks/int8_latency.py [--quick | --smoke] [--threads N] [--sizes ...]``
"""
import argparse
from dataclasses import asdict, replace
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
# The sizes, rounds and timing loop of the float comparison, so the two tables compare alike.
from onnx_latency import (CALLS_PER_ROUND, CONFIGS, DEFAULT_SIZES, FRAME_SIZE,
                          latency_arguments, ROUNDS, timed_calls, WARMUP_CALLS)
import onnxruntime
import torch

from common.cli import begin
from common.frames import rendered_frames
from common.models import parameter_count
from common.results import save_results, WORK_DIR
from common.stats import summarise
from mspr_ros.model.ms_transformer import build_model
from mspr_ros.onnx_backend import export_onnx, OnnxSession
from mspr_ros.preprocess import preprocess_image
from mspr_training.config import load_config
from mspr_training.quantize import int8_kernels, quantize_int8

NAME = 'int8_latency'
CALIBRATION_FRAMES = {'full': 32, 'quick': 16, 'smoke': 4}
CHECK_FRAMES = {'full': 8, 'quick': 4, 'smoke': 2}
GOAL_RATIO = 0.35
VARIANTS = ('torch', 'onnxruntime', 'int8')


def measure_size(size: str, frames: List[np.ndarray], mode: str, threads: int, opset: int,
                 seed: int) -> Dict[str, Any]:
    """Export and quantize one size, then time the three variants side by side."""
    train_config = load_config(CONFIGS[size])
    config = replace(train_config.model, backbone_weights=None)
    preprocessing = train_config.augmentation.preprocessing()
    torch.manual_seed(seed)
    model = build_model(config).eval()
    folder = WORK_DIR / NAME
    folder.mkdir(parents=True, exist_ok=True)
    float_path, int8_path = folder / f'{size}.onnx', folder / f'{size}.int8.onnx'
    export_onnx(model, float_path, preprocessing.crop, opset)
    batch = np.stack([preprocess_image(frame, preprocessing).numpy() for frame in frames])
    calibration = batch[:CALIBRATION_FRAMES[mode]]
    check = batch[CALIBRATION_FRAMES[mode]:]
    started = time.perf_counter()
    quantized = quantize_int8(float_path, int8_path, calibration, check)
    quantize_s = time.perf_counter() - started
    images = batch[:1]
    tensor = torch.from_numpy(images)
    sessions = {'onnxruntime': OnnxSession(float_path, 'cpu', threads=threads),
                'int8': OnnxSession(int8_path, 'cpu', threads=threads)}

    def torch_call():
        with torch.inference_mode():
            return model(tensor)
    calls = {'torch': torch_call, 'onnxruntime': lambda: sessions['onnxruntime'].run(images),
             'int8': lambda: sessions['int8'].run(images)}
    for call in calls.values():
        for _ in range(WARMUP_CALLS[mode]):
            call()
    samples: Dict[str, List[float]] = {name: [] for name in VARIANTS}
    for round_index in range(ROUNDS[mode]):
        shift = round_index % len(VARIANTS)
        for name in VARIANTS[shift:] + VARIANTS[:shift]:
            samples[name].extend(timed_calls(calls[name], CALLS_PER_ROUND[mode]))
    ms = {name: summarise(values) for name, values in samples.items()}
    ratios = {name: {'p50': ms[name].p50 / ms['torch'].p50, 'p95': ms[name].p95 / ms['torch'].p95}
              for name in ('onnxruntime', 'int8')}
    return {
        'config': CONFIGS[size], 'model': config.to_dict(), 'crop': preprocessing.crop,
        'parameters': parameter_count(model), 'float_bytes': float_path.stat().st_size,
        'int8_bytes': int8_path.stat().st_size, 'quantize_s': quantize_s,
        'quantization': quantized.summary, 'providers': sessions['int8'].providers,
        'ms': {name: asdict(summary) for name, summary in ms.items()}, 'ratio_to_torch': ratios,
        'goal_ratio': GOAL_RATIO, 'goal_met': ratios['int8']['p50'] <= GOAL_RATIO,
    }


def print_row(size: str, result: Dict[str, Any]) -> None:
    """Print one size's figures."""
    ms, ratio = result['ms'], result['ratio_to_torch']
    check = result['quantization']['check']['outputs']
    print(f"{size:6s} {result['parameters'] / 1e6:6.1f} M  torch {ms['torch']['p50']:7.1f} ms  "
          f"onnxruntime {ms['onnxruntime']['p50']:7.1f} ms ({ratio['onnxruntime']['p50']:.2f})  "
          f"int8 {ms['int8']['p50']:7.1f} ms ({ratio['int8']['p50']:.2f}; goal <= {GOAL_RATIO}: "
          f"{result['goal_met']})  int8 position median |diff| "
          f"{check['position']['median_abs_difference']:.2e}", flush=True)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse the command line."""
    return latency_arguments(__doc__.split('\n')[0], onnx=True).parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the benchmark; return the exit status."""
    args = parse_args(argv)
    mode, machine, notes = begin(args)
    sizes = tuple(args.sizes or DEFAULT_SIZES[mode])
    frames = rendered_frames(CALIBRATION_FRAMES[mode] + CHECK_FRAMES[mode], FRAME_SIZE)
    print(f'batch 1, p50 of {ROUNDS[mode] * CALLS_PER_ROUND[mode]} calls per variant, '
          f'onnxruntime {onnxruntime.__version__}, {int8_kernels()["kernels"]}')
    results = {size: measure_size(size, frames, mode, args.threads, args.opset, args.seed)
               for size in sizes}
    for size, result in results.items():
        print_row(size, result)
    notes = list(notes)
    notes.append('random initialisation (backbone_weights none): the latency does not depend '
                 'on the weights; the int8 ranges are calibrated on rendered frames')
    settings = {'threads': args.threads, 'sizes': list(sizes), 'opset': args.opset,
                'seed': args.seed, 'rounds': ROUNDS[mode],
                'calls_per_round': CALLS_PER_ROUND[mode], 'warmup_calls': WARMUP_CALLS[mode],
                'calibration_frames': CALIBRATION_FRAMES[mode],
                'check_frames': CHECK_FRAMES[mode], 'frame_size': list(FRAME_SIZE),
                'onnxruntime_version': onnxruntime.__version__, 'cpu': int8_kernels()}
    return save_results(args.out, NAME, mode, machine, settings, results, notes)


if __name__ == '__main__':
    sys.exit(main())
