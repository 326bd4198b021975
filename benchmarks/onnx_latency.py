"""Batch-1 CPU latency of the Localizer's two back-ends: torch eager vs ONNX Runtime.

For each model size the seeded model (random initialisation, ``backbone_weights`` none: timing
does not depend on the weights) is exported to ONNX as ``mspr-export --onnx`` does
(``mspr_ros.onnx_backend.export_onnx``, TorchScript exporter, opset ``--opset``), then one
preprocessed rendered frame at the configuration's crop size goes through both back-ends:

- torch: ``model(images)`` under ``torch.inference_mode()``, the model as built (the Localizer's
  torch path until it ran ``inference_model``'s copy, which ``torch_latency.py`` times);
- onnxruntime: ``OnnxSession.run`` (CPUExecutionProvider, the Localizer's session settings,
  so batch 1 runs the session specialised to batch 1).

Both use ``--threads`` intra-op threads (``torch.set_num_threads`` and the session's
``intra_op_num_threads``). Timings are interleaved: each round times a few calls of one back-end
then of the other (the order alternating between rounds, one untimed call after each switch), so
load changes on a shared machine hit both alike. Reported per size: p50/p95 of each back-end,
the ratio onnxruntime / torch (goal of issue 18: at most 0.6 on the CPU), and the largest
difference between their outputs on the frame (with the top-two scene margin: a random model's
scenes can be tied, and then the two back-ends may pick different ones).

Sizes: 'demo' (the model of ``synth_demo.yaml``: Lite0, d=64, 2+2 layers, maps pooled 2x),
'paper' (``7scenes_ours.yaml``: EfficientNet-B0, d=256, 6+6 layers per branch, 7 scenes), and
'tiny' (``tiny_test.yaml``, 64x64: what ``--smoke`` runs).

Usage: ``python benchmarks/onnx_latency.py [--quick | --smoke] [--threads N] [--sizes ...]``
"""
import argparse
from dataclasses import asdict, replace
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import onnxruntime
import torch

from common.cli import add_common_arguments, begin
from common.frames import rendered_frames
from common.models import parameter_count
from common.results import save_results, WORK_DIR
from common.stats import summarise
from mspr_ros.model.ms_transformer import build_model
from mspr_ros.onnx_backend import DEFAULT_OPSET, export_onnx, OnnxSession
from mspr_ros.preprocess import preprocess_image
from mspr_training.config import load_config

NAME = 'onnx_latency'
CONFIGS = {'tiny': 'tiny_test', 'demo': 'synth_demo', 'paper': '7scenes_ours'}
DEFAULT_SIZES = {'full': ('demo', 'paper'), 'quick': ('demo', 'paper'), 'smoke': ('tiny',)}
ROUNDS = {'full': 20, 'quick': 8, 'smoke': 2}
CALLS_PER_ROUND = {'full': 10, 'quick': 5, 'smoke': 2}
WARMUP_CALLS = {'full': 5, 'quick': 3, 'smoke': 1}
GOAL_RATIO = 0.6
FRAME_SIZE = (320, 240)


def timed_calls(call, count: int) -> List[float]:
    """Run ``call`` once untimed (the other back-end's threads wind down), then time ``count``."""
    call()
    durations = []
    for _ in range(count):
        started = time.perf_counter()
        call()
        durations.append((time.perf_counter() - started) * 1e3)
    return durations


def measure_size(size: str, frame: np.ndarray, mode: str, threads: int, opset: int,
                 seed: int) -> Dict[str, Any]:
    """Export one size, check both back-ends agree, and time them side by side."""
    train_config = load_config(CONFIGS[size])
    config = replace(train_config.model, backbone_weights=None)
    preprocessing = train_config.augmentation.preprocessing()
    torch.manual_seed(seed)
    model = build_model(config).eval()
    path = WORK_DIR / NAME / f'{size}.onnx'
    path.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    export_onnx(model, path, preprocessing.crop, opset)
    export_s = time.perf_counter() - started
    session = OnnxSession(path, 'cpu', threads=threads)
    images = preprocess_image(frame, preprocessing)[None]
    images_np = images.numpy()

    def torch_call():
        with torch.inference_mode():
            return model(images)

    def ort_call():
        return session.run(images_np)

    expected, actual = torch_call(), ort_call()
    difference = {name: float(np.abs(actual[name] - expected[name].numpy()).max())
                  for name in ('position', 'orientation', 'scene_log_probs')}
    for call in (torch_call, ort_call):
        for _ in range(WARMUP_CALLS[mode]):
            call()
    samples: Dict[str, List[float]] = {'torch': [], 'onnxruntime': []}
    calls = {'torch': torch_call, 'onnxruntime': ort_call}
    for round_index in range(ROUNDS[mode]):
        order = ('torch', 'onnxruntime') if round_index % 2 == 0 else ('onnxruntime', 'torch')
        for backend in order:
            samples[backend].extend(timed_calls(calls[backend], CALLS_PER_ROUND[mode]))
    torch_ms, ort_ms = summarise(samples['torch']), summarise(samples['onnxruntime'])
    ratio_p50, ratio_p95 = ort_ms.p50 / torch_ms.p50, ort_ms.p95 / torch_ms.p95
    return {
        'config': CONFIGS[size], 'model': config.to_dict(), 'crop': preprocessing.crop,
        'parameters': parameter_count(model), 'onnx_bytes': path.stat().st_size,
        'export_s': export_s, 'providers': session.providers,
        'max_abs_difference': difference,
        'scene_agrees': bool(int(actual['scene'][0]) == int(expected['scene'][0])),
        'scene_margin': float(torch.topk(expected['scene_log_probs'][0], 2).values.diff().abs()),
        'torch_ms': asdict(torch_ms), 'onnxruntime_ms': asdict(ort_ms),
        'ratio_p50': ratio_p50, 'ratio_p95': ratio_p95, 'goal_ratio': GOAL_RATIO,
        'goal_met': ratio_p50 <= GOAL_RATIO,
    }


def print_row(size: str, result: Dict[str, Any]) -> None:
    """Print one size's figures."""
    torch_ms, ort_ms = result['torch_ms'], result['onnxruntime_ms']
    worst = max(result['max_abs_difference'].values())
    print(f"{size:6s} {result['parameters'] / 1e6:6.1f} M  {result['crop']:4d}px  "
          f"torch {torch_ms['p50']:7.1f} / {torch_ms['p95']:7.1f} ms  "
          f"onnxruntime {ort_ms['p50']:7.1f} / {ort_ms['p95']:7.1f} ms  "
          f"ratio {result['ratio_p50']:.2f} / {result['ratio_p95']:.2f} "
          f"(goal <= {GOAL_RATIO}: {result['goal_met']})  max |diff| {worst:.1e}", flush=True)


def latency_arguments(description: str, onnx: bool) -> argparse.ArgumentParser:
    """Return the command line of the batch-1 latency benchmarks (this one, int8, torch).

    ``--sizes`` and ``--seed``, and ``--opset`` when the benchmark exports ONNX graphs.
    """
    parser = argparse.ArgumentParser(description=description)
    add_common_arguments(parser)
    parser.add_argument('--sizes', nargs='+', choices=sorted(CONFIGS), default=None,
                        help='model sizes (default: demo paper; tiny with --smoke)')
    if onnx:
        parser.add_argument('--opset', type=int, default=DEFAULT_OPSET,
                            help=f'ONNX opset of the exported graphs (default {DEFAULT_OPSET})')
    parser.add_argument('--seed', type=int, default=0, help='model initialisation seed')
    return parser


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse the command line."""
    return latency_arguments(__doc__.split('\n')[0], onnx=True).parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the benchmark; return the exit status."""
    args = parse_args(argv)
    mode, machine, notes = begin(args)
    sizes = tuple(args.sizes or DEFAULT_SIZES[mode])
    frame = rendered_frames(1, FRAME_SIZE)[0]
    print(f'batch 1, p50 / p95 of {ROUNDS[mode] * CALLS_PER_ROUND[mode]} calls per back-end, '
          f'onnxruntime {onnxruntime.__version__}, opset {args.opset}')
    results = {size: measure_size(size, frame, mode, args.threads, args.opset, args.seed)
               for size in sizes}
    for size, result in results.items():
        print_row(size, result)
    notes = list(notes)
    notes.append('random initialisation (backbone_weights none): latency does not depend on '
                 'the weights (denormals are not flushed in either back-end)')
    settings = {'threads': args.threads, 'sizes': list(sizes), 'opset': args.opset,
                'seed': args.seed, 'rounds': ROUNDS[mode],
                'calls_per_round': CALLS_PER_ROUND[mode], 'warmup_calls': WARMUP_CALLS[mode],
                'frame_size': list(FRAME_SIZE), 'onnxruntime_version': onnxruntime.__version__,
                'exporter': 'torch.onnx.export(dynamo=False)'}
    return save_results(args.out, NAME, mode, machine, settings, results, notes)


if __name__ == '__main__':
    sys.exit(main())
