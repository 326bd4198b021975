"""Batch-1 torch eager latency of the model rewritten for inference vs today's path (issue 27).

For each model size the seeded model (random initialisation, ``backbone_weights`` none, and
BatchNorm statistics drawn away from the identity, so that folding them is not a no-op) is run
at batch 1 on one preprocessed rendered frame, under ``torch.inference_mode()``, in these
variants, each built on the one before (``mspr_ros.model.inference``):

- ``today``: the model as built, what the Localizer ran when issue 27 was filed (kept as the
  baseline, as ``train_speed.py`` keeps its own);
- ``fold_bn``: every BatchNorm folded into its convolution;
- ``attention``: and the decoder's attention without the copies of ``nn.MultiheadAttention``;
- ``cross_attention``: and the decoder's cross-attention without projecting the image tokens to
  keys and values (``FewQueryCrossAttention``: the scene queries are few);
- ``channels_last``: and the convolutions in channels-last memory format: ``inference_model``,
  the Localizer's torch path (see benchmarks/README.md);
- ``compiled``: that model compiled by ``torch.compile`` (TorchInductor, ``dynamic=False``), what
  the Localizer runs with ``torch_compile`` (``mspr_ros.compiled_forward``): not eager, so the
  issue's eager goal is judged on ``channels_last``; the time ``compile_model`` takes (with
  TorchInductor's on-disk cache empty: a robot's first start) is reported beside it.

All with ``--threads`` intra-op threads, interleaved round by round (the order rotating), so load
changes on a shared machine hit every variant alike. Reported per size: p50/p95 of each variant,
its ratio to ``today`` (goal of issue 27: at most 0.72 on the paper model), the largest output
difference to ``today``, and where each of ``today`` and ``channels_last`` spends its time (the
operators with the most self CPU time over a few profiled calls). And the arithmetic: FLOPs per
forward of ``today`` and of ``channels_last`` (``common/arithmetic.py``), this CPU's rate on a
large float32 matrix product measured in the same run, and the time the rewritten model's
arithmetic would take at that rate, over today's: the floor below which no float32
implementation of the same arithmetic goes on this machine.

Usage: ``python benchmarks/torch_latency.py [--quick | --smoke] [--threads N] [--sizes ...]``
"""
import argparse
import contextlib
import copy
from dataclasses import asdict, replace
import os
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
# The sizes, rounds and timing loop of the back-end comparison, so the tables compare alike.
from onnx_latency import (CALLS_PER_ROUND, CONFIGS, DEFAULT_SIZES, FRAME_SIZE,
                          latency_arguments, ROUNDS, timed_calls, WARMUP_CALLS)
import torch
from torch import nn
from torch.profiler import profile, ProfilerActivity

from common.arithmetic import forward_flops, matmul_gflops
from common.cli import begin
from common.frames import rendered_frames
from common.models import parameter_count
from common.results import save_results
from common.stats import summarise
from mspr_ros.compiled_forward import compile_model
from mspr_ros.model.inference import (fold_batch_norms, inference_model,
                                      use_few_query_cross_attention,
                                      use_memory_efficient_attention)
from mspr_ros.model.ms_transformer import build_model
from mspr_ros.preprocess import preprocess_image
from mspr_training.config import load_config

NAME = 'torch_latency'
GOAL_RATIO = 0.72
PROFILED_CALLS = {'full': 5, 'quick': 3, 'smoke': 1}
TOP_OPERATORS = 8
OUTPUTS = ('position', 'orientation', 'scene_log_probs')


def _folded(model: nn.Module) -> nn.Module:
    folded = copy.deepcopy(model)
    fold_batch_norms(folded)
    return folded


def _attention(model: nn.Module) -> nn.Module:
    rewritten = _folded(model)
    use_memory_efficient_attention(rewritten)
    return rewritten


def _cross_attention(model: nn.Module) -> nn.Module:
    rewritten = _attention(model)
    use_few_query_cross_attention(rewritten)
    return rewritten


VARIANTS: Dict[str, Callable[[nn.Module], nn.Module]] = {
    'today': lambda model: model,
    'fold_bn': _folded,
    'attention': _attention,
    'cross_attention': _cross_attention,
    'channels_last': inference_model,
    'compiled': inference_model,   # compiled by measure_size, as the Localizer compiles it
}
EAGER = 'channels_last'      # the eager variant the goal is judged on
PROFILED = ('today', 'channels_last')


def seeded_model(size: str, seed: int) -> nn.Module:
    """Return the size's model, randomly initialised, with BatchNorm statistics off identity."""
    config = replace(load_config(CONFIGS[size]).model, backbone_weights=None)
    torch.manual_seed(seed)
    model = build_model(config).eval()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    return model


def top_operators(model: nn.Module, images: torch.Tensor, calls: int) -> List[Dict[str, Any]]:
    """Return the operators with the most self CPU time over ``calls`` forwards, per forward."""
    with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(calls):
            model(images)
    events = prof.key_averages()
    total = sum(event.self_cpu_time_total for event in events)
    ranked = sorted(events, key=lambda event: event.self_cpu_time_total, reverse=True)
    return [{'operator': event.key, 'share': event.self_cpu_time_total / total,
             'ms_per_forward': event.self_cpu_time_total / 1e3 / calls,
             'calls_per_forward': event.count / calls}
            for event in ranked[:TOP_OPERATORS]]


def measure_size(size: str, frame: np.ndarray, mode: str, seed: int) -> Dict[str, Any]:
    """Build the variants of one size, check they agree, profile and time them side by side."""
    model = seeded_model(size, seed)
    preprocessing = load_config(CONFIGS[size]).augmentation.preprocessing()
    images = preprocess_image(frame, preprocessing)[None]
    variants = {name: build(model) for name, build in VARIANTS.items()}
    started = time.perf_counter()
    variants['compiled'] = compile_model(variants['compiled'], images, contextlib.nullcontext)
    compile_s = time.perf_counter() - started
    with torch.inference_mode():
        outputs = {name: variant(images) for name, variant in variants.items()}
    difference = {name: max(float((outputs[name][key] - outputs['today'][key]).abs().max())
                            for key in OUTPUTS) for name in variants}
    profiles = {name: top_operators(variants[name], images, PROFILED_CALLS[mode])
                for name in PROFILED}

    def call(variant: nn.Module) -> Callable[[], Any]:
        def run():
            with torch.inference_mode():
                return variant(images)
        return run

    calls = {name: call(variant) for name, variant in variants.items()}
    for run in calls.values():
        for _ in range(WARMUP_CALLS[mode]):
            run()
    samples: Dict[str, List[float]] = {name: [] for name in variants}
    names = list(variants)
    for round_index in range(ROUNDS[mode]):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            samples[name].extend(timed_calls(calls[name], CALLS_PER_ROUND[mode]))
    timings = {name: summarise(values) for name, values in samples.items()}
    ratios = {name: timing.p50 / timings['today'].p50 for name, timing in timings.items()}
    flops = {name: forward_flops(variants[name], images) for name in PROFILED}
    rate = matmul_gflops()
    floor_ms = flops['channels_last'] / (rate * 1e9) * 1e3
    return {
        'config': CONFIGS[size], 'crop': preprocessing.crop,
        'parameters': parameter_count(model),
        'ms': {name: asdict(timing) for name, timing in timings.items()},
        'ratio_p50': ratios,
        'ratio_p95': {name: timing.p95 / timings['today'].p95
                      for name, timing in timings.items()},
        'max_abs_difference': difference,
        'compile_s': compile_s,
        'profile': profiles,
        'arithmetic': {'gflop_per_forward': {name: value / 1e9 for name, value in flops.items()},
                       'matmul_gflop_s': rate, 'floor_ms': floor_ms,
                       'floor_ratio': floor_ms / timings['today'].p50},
        'goal_ratio': GOAL_RATIO, 'goal_met': ratios[EAGER] <= GOAL_RATIO,
        'compiled_within_goal_ratio': ratios['compiled'] <= GOAL_RATIO,
    }


def print_row(size: str, result: Dict[str, Any]) -> None:
    """Print one size's figures."""
    cells = '  '.join(f"{name} {result['ms'][name]['p50']:.1f} ms "
                      f"({result['ratio_p50'][name]:.2f})" for name in VARIANTS)
    print(f"{size:6s} {result['parameters'] / 1e6:6.1f} M  {cells}  goal <= {GOAL_RATIO}: "
          f"{result['goal_met']}  max |diff| "
          f"{max(result['max_abs_difference'].values()):.1e}", flush=True)
    arithmetic = result['arithmetic']
    flops = arithmetic['gflop_per_forward']
    print(f"{'':6s} {flops['today']:.2f} -> {flops['channels_last']:.2f} GFLOP per forward; at "
          f"{arithmetic['matmul_gflop_s']:.0f} GFLOP/s (float32 matmul here) the rewritten "
          f"model's arithmetic takes {arithmetic['floor_ms']:.1f} ms, "
          f"{arithmetic['floor_ratio']:.2f} of today", flush=True)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse the command line."""
    return latency_arguments(__doc__.split('\n')[0], onnx=False).parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the benchmark; return the exit status."""
    args = parse_args(argv)
    mode, machine, notes = begin(args)
    sizes = tuple(args.sizes or DEFAULT_SIZES[mode])
    frame = rendered_frames(1, FRAME_SIZE)[0]
    print(f'batch 1, torch {torch.__version__}, p50 of {ROUNDS[mode] * CALLS_PER_ROUND[mode]} '
          'calls per variant (ratio to today)')
    # A cache of TorchInductor's own for this run: the compile time reported is a robot's
    # first start (cold), not a reuse of kernels an earlier run left on disk.
    with tempfile.TemporaryDirectory(prefix='torch_latency_inductor_') as cache:
        os.environ['TORCHINDUCTOR_CACHE_DIR'] = cache
        results = {size: measure_size(size, frame, mode, args.seed) for size in sizes}
    for size, result in results.items():
        print_row(size, result)
    notes = list(notes)
    notes.append('random initialisation (backbone_weights none, BatchNorm statistics drawn '
                 'off identity): latency does not depend on the weights')
    settings = {'threads': args.threads, 'sizes': list(sizes), 'seed': args.seed,
                'variants': list(VARIANTS), 'rounds': ROUNDS[mode],
                'calls_per_round': CALLS_PER_ROUND[mode], 'warmup_calls': WARMUP_CALLS[mode],
                'profiled_calls': PROFILED_CALLS[mode], 'frame_size': list(FRAME_SIZE),
                'inductor_cache': 'empty at the start (cold compile)'}
    return save_results(args.out, NAME, mode, machine, settings, results, notes)


if __name__ == '__main__':
    sys.exit(main())
