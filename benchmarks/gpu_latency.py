"""Latency and throughput of the Localizer per precision and with CUDA graphs (issue 18).

For each model size (``common.models.model_config``: 'demo' and 'paper', 'tiny' with ``--smoke``)
one seeded bundle (random heads on the Lite0 ImageNet trunk: timing does not depend on the head
weights) is loaded once per variant on ``--device``: fp32, fp16 and bf16 autocast, each eager and
with ``cuda_graphs`` (single images replay a captured CUDA graph). Per variant:

- ``localize_ms``: ``Localizer.localize`` of one rendered frame at the bundle's resize size
  (square, so preprocessing crops without resampling much), wall clock: preprocessing on the
  CPU, the copy, the model, the results back as numpy. What the node pays per frame.
- ``model_ms``: ``Localizer.run_model`` on one preprocessed image already on the device, between
  two ``torch.cuda.synchronize`` calls (on the CPU the call itself is synchronous).
- ``throughput``: images/s of ``run_model`` at ``--batch`` images per call, eager (graphs serve
  batch 1 only, so graph variants have no row of their own), input already on the device.
- ``difference_vs_fp32``: over ``--images`` frames through ``localize``, the largest difference
  from fp32 eager: position (m) and orientation (deg) where both pick the same scene, scene
  probability over all frames, and how many frames pick another scene.

Goal (issue 18): ``localize_ms`` p50 below 3 ms per image on an H100-class GPU; printed with its
verdict on CUDA. On the CPU, fp32 and bf16 run (so the script provably works) and every CUDA-only
variant is recorded as ``{'skipped': 'needs CUDA'}``. Variants run one after the other.

Usage: ``python benchmarks/gpu_latency.py [--quick | --smoke] [--device auto] [--sizes ...]``
"""
import argparse
import gc
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

from common.cli import add_common_arguments, begin
from common.frames import rendered_frames
from common.models import model_config, MODEL_SIZES, save_random_bundle
from common.results import save_results, WORK_DIR
from common.stats import summarise
from mspr_ros.bundle import load_bundle
from mspr_ros.device import resolve_device, supports_bf16
from mspr_ros.localizer import LocalizationResult, Localizer
from mspr_ros.preprocess import preprocess_batch

NAME = 'gpu_latency'
GOAL_P50_MS = 3.0
# (precision, cuda_graphs); fp32 eager first: it is the reference of the differences.
VARIANTS = (('fp32', False), ('fp16', False), ('bf16', False),
            ('fp32', True), ('fp16', True), ('bf16', True))
DEFAULT_SIZES = {'full': ('demo', 'paper'), 'quick': ('demo', 'paper'), 'smoke': ('tiny',)}
# Per device type and mode: timed calls, warm-up calls, throughput batch and batches.
CALLS = {'cuda': {'full': 1000, 'quick': 300, 'smoke': 20},
         'cpu': {'full': 60, 'quick': 15, 'smoke': 3}}
WARMUP_CALLS = {'cuda': {'full': 50, 'quick': 20, 'smoke': 3},
                'cpu': {'full': 5, 'quick': 2, 'smoke': 1}}
BATCH = {'cuda': {'full': 32, 'quick': 32, 'smoke': 4}, 'cpu': {'full': 8, 'quick': 8, 'smoke': 2}}
BATCHES = {'cuda': {'full': 50, 'quick': 20, 'smoke': 2},
           'cpu': {'full': 5, 'quick': 2, 'smoke': 1}}
DIFFERENCE_IMAGES = {'full': 16, 'quick': 8, 'smoke': 2}


def variant_name(precision: str, cuda_graphs: bool) -> str:
    """Return the row name of a variant, e.g. 'fp16+graph'."""
    return precision + ('+graph' if cuda_graphs else '')


def skip_reason(precision: str, cuda_graphs: bool, device: torch.device) -> Optional[str]:
    """Return why a variant cannot run on ``device`` (None when it can)."""
    if device.type != 'cuda' and (cuda_graphs or precision == 'fp16'):
        return 'needs CUDA'
    if precision == 'bf16' and not supports_bf16(device):
        return 'needs a GPU with bfloat16 (compute capability 8.0 or newer)'
    return None


def synchronizer(device: torch.device) -> Callable[[], None]:
    """Return a call that waits for the device's queued work (nothing to wait for on the CPU)."""
    if device.type == 'cuda':
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def timed_ms(call: Callable[[], Any], count: int, sync: Callable[[], None]) -> List[float]:
    """Return the wall-clock durations (ms) of ``count`` calls, each between two syncs."""
    durations = []
    for _ in range(count):
        sync()
        started = time.perf_counter()
        call()
        sync()
        durations.append((time.perf_counter() - started) * 1e3)
    return durations


def throughput(localizer: Localizer, frames: List[np.ndarray], batch: int, batches: int,
               sync: Callable[[], None]) -> Dict[str, Any]:
    """Return images/s of ``run_model`` on a device-resident batch of ``batch`` frames."""
    images = preprocess_batch([frames[i % len(frames)] for i in range(batch)],
                              localizer.bundle.preprocessing).to(localizer.device)
    localizer.run_model(images)  # warm-up: kernels for this batch size
    sync()
    started = time.perf_counter()
    for _ in range(batches):
        localizer.run_model(images)
    sync()
    seconds = time.perf_counter() - started
    return {'batch': batch, 'batches': batches, 'seconds': seconds,
            'images_per_s': batch * batches / seconds}


def orientation_deg(a: np.ndarray, b: np.ndarray) -> float:
    """Return the angle (degrees) of the rotation between two unit quaternions.

    From the chord ``|a - b|`` (sign-aligned), not ``arccos(a . b)``: the arccos of a dot
    product rounded just below 1 reads 1e-6 degrees for identical rotations.
    """
    sign = 1.0 if float(a @ b) >= 0.0 else -1.0
    chord = float(np.linalg.norm(a - sign * b))
    return float(np.degrees(4.0 * np.arcsin(min(1.0, chord / 2.0))))


def difference(results: List[LocalizationResult],
               reference: List[LocalizationResult]) -> Dict[str, Any]:
    """Return the largest differences of ``results`` from the fp32 ``reference``, frame by frame.

    Position and orientation count only frames where both pick the same scene (another scene's
    latent gives another pose: that is the disagreement count's to say).
    """
    same = [(r, e) for r, e in zip(results, reference) if r.scene_index == e.scene_index]
    return {
        'images': len(results),
        'scene_disagreements': len(results) - len(same),
        'position_m': max((float(np.linalg.norm(r.position - e.position)) for r, e in same),
                          default=0.0),
        'orientation_deg': max((orientation_deg(r.orientation, e.orientation)
                                for r, e in same), default=0.0),
        'scene_probability': max(float(np.abs(r.scene_probabilities
                                              - e.scene_probabilities).max())
                                 for r, e in zip(results, reference)),
    }


def measure_variant(bundle_path, precision: str, cuda_graphs: bool, device: torch.device,
                    frames: List[np.ndarray], counts: Dict[str, int],
                    reference: Optional[List[LocalizationResult]]) -> Dict[str, Any]:
    """Time one variant; return its record (and its localize results under 'outputs')."""
    record: Dict[str, Any] = {'precision': precision, 'cuda_graphs': cuda_graphs}
    reason = skip_reason(precision, cuda_graphs, device)
    if reason:
        return {**record, 'skipped': reason}
    started = time.perf_counter()
    localizer = Localizer.from_file(bundle_path, device=str(device), precision=precision,
                                    cuda_graphs=cuda_graphs)
    record['setup_s'] = time.perf_counter() - started
    if (localizer.precision, localizer.cuda_graphs) != (precision, cuda_graphs):
        return {**record, 'skipped': f'the localizer fell back to {localizer.precision}, '
                                     f'cuda_graphs {localizer.cuda_graphs}'}
    sync = synchronizer(device)
    frame = frames[0]
    one = preprocess_batch([frame], localizer.bundle.preprocessing).to(device)
    for _ in range(counts['warmup']):
        localizer.localize(frame)
        localizer.run_model(one)
    record['localize_ms'] = summarise(timed_ms(lambda: localizer.localize(frame),
                                               counts['calls'], sync))
    record['model_ms'] = summarise(timed_ms(lambda: localizer.run_model(one), counts['calls'],
                                            sync))
    record['throughput'] = (None if cuda_graphs else
                            throughput(localizer, frames, counts['batch'], counts['batches'],
                                       sync))
    outputs = [localizer.localize(image) for image in frames]
    record['difference_vs_fp32'] = difference(outputs, reference or outputs)
    record['goal_met'] = (record['localize_ms'].p50 < GOAL_P50_MS if device.type == 'cuda'
                          else None)
    record['outputs'] = outputs
    return record


def release(device: torch.device) -> None:
    """Free the last variant's model (and CUDA graph pool) before the next one loads."""
    gc.collect()
    if device.type == 'cuda':
        torch.cuda.empty_cache()


def measure_size(size: str, device: torch.device, counts: Dict[str, int],
                 frames_for: Callable[[int], List[np.ndarray]], seed: int) -> Dict[str, Any]:
    """Measure every variant of one model size; return the size's record."""
    config = model_config(size)
    bundle_path, parameters = save_random_bundle(WORK_DIR / NAME / f'{size}.safetensors',
                                                 config, seed)
    preprocessing = load_bundle(bundle_path).preprocessing
    frames = frames_for(preprocessing.resize)
    variants: Dict[str, Dict[str, Any]] = {}
    reference = None
    for precision, cuda_graphs in VARIANTS:
        name = variant_name(precision, cuda_graphs)
        print(f'{size}: {name} ...', flush=True)
        record = measure_variant(bundle_path, precision, cuda_graphs, device, frames, counts,
                                 reference)
        release(device)
        outputs = record.pop('outputs', None)
        if name == 'fp32':
            reference = outputs
        variants[name] = record
    ran = {name: v for name, v in variants.items() if 'skipped' not in v}
    best = min(ran, key=lambda name: ran[name]['localize_ms'].p50)
    goal = {'p50_ms': GOAL_P50_MS, 'judged_on': 'localize_ms p50'}
    if device.type == 'cuda':
        goal.update(applies=True, best_variant=best, best_p50_ms=ran[best]['localize_ms'].p50,
                    met=ran[best]['localize_ms'].p50 < GOAL_P50_MS)
    else:
        goal.update(applies=False, reason='the goal is for an H100-class GPU; this ran on the CPU')
    return {'model': config.to_dict(), 'parameters': parameters, 'crop': preprocessing.crop,
            'frame_size': [preprocessing.resize, preprocessing.resize], 'variants': variants,
            'goal': goal}


def print_size(size: str, result: Dict[str, Any]) -> None:
    """Print one size's table and the goal's verdict."""
    print(f"\n{size} ({result['parameters'] / 1e6:.1f} M parameters, {result['crop']}px): "
          'localize p50 / p99 ms, model p50 / p99 ms, eager images/s at the batch, largest '
          'difference from fp32 (position m, orientation deg, scene probability, scenes '
          'disagreeing)')
    for name, record in result['variants'].items():
        if 'skipped' in record:
            print(f"  {name:<11} skipped: {record['skipped']}")
            continue
        local, model, diff = record['localize_ms'], record['model_ms'], record[
            'difference_vs_fp32']
        rate = record['throughput']
        rate_text = (f"{rate['images_per_s']:8.1f} @{rate['batch']}" if rate
                     else '   (batch 1 only)')
        print(f"  {name:<11}{local.p50:8.2f} / {local.p99:7.2f}{model.p50:9.2f} / "
              f"{model.p99:7.2f}  {rate_text}   {diff['position_m']:.1e} m "
              f"{diff['orientation_deg']:.1e} deg {diff['scene_probability']:.1e} "
              f"{diff['scene_disagreements']}/{diff['images']}", flush=True)
    goal = result['goal']
    if goal['applies']:
        verdict = 'met' if goal['met'] else 'NOT met'
        print(f"  goal localize p50 < {GOAL_P50_MS} ms: {verdict} (best {goal['best_variant']}"
              f" {goal['best_p50_ms']:.2f} ms)")
    else:
        print(f"  goal localize p50 < {GOAL_P50_MS} ms: not judged ({goal['reason']})")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    add_common_arguments(parser)
    parser.add_argument('--device', default='auto',
                        help="'auto' (CUDA when available), 'cpu', 'cuda' or 'cuda:N'")
    parser.add_argument('--sizes', nargs='+', choices=MODEL_SIZES, default=None,
                        help='model sizes (default: demo paper; tiny with --smoke)')
    parser.add_argument('--calls', type=int, default=None, help='timed calls per variant')
    parser.add_argument('--batch', type=int, default=None, help='throughput batch size')
    parser.add_argument('--images', type=int, default=None,
                        help='frames compared with fp32 per variant')
    parser.add_argument('--seed', type=int, default=0, help='model initialisation seed')
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the benchmark; return the exit status."""
    args = parse_args(argv)
    mode, machine, notes = begin(args)
    device = resolve_device(args.device)
    kind = device.type
    counts = {'calls': args.calls or CALLS[kind][mode], 'warmup': WARMUP_CALLS[kind][mode],
              'batch': args.batch or BATCH[kind][mode], 'batches': BATCHES[kind][mode]}
    images = args.images or DIFFERENCE_IMAGES[mode]
    sizes = tuple(args.sizes or DEFAULT_SIZES[mode])
    notes = list(notes)
    if kind != 'cuda':
        notes.append('no CUDA: fp16 and every CUDA-graph variant skipped; the 3 ms goal is not '
                     'judged (it is for an H100-class GPU)')
    notes.append('random heads on the Lite0 ImageNet trunk: latency does not depend on them; '
                 'the differences from fp32 are those of this random model')
    for note in notes:
        print(f'note: {note}')
    print(f"device {device}, {counts['calls']} timed calls per variant after "
          f"{counts['warmup']} warm-up, throughput batch {counts['batch']}", flush=True)
    rendered: Dict[int, List[np.ndarray]] = {}

    def frames_for(resize: int) -> List[np.ndarray]:
        if resize not in rendered:
            rendered[resize] = rendered_frames(images, (resize, resize))
        return rendered[resize]

    results = {size: measure_size(size, device, counts, frames_for, args.seed)
               for size in sizes}
    for size, result in results.items():
        print_size(size, result)
    settings = {'threads': args.threads, 'device': str(device), 'device_type': kind,
                'sizes': list(sizes), 'seed': args.seed, **counts, 'images': images,
                'variants': [variant_name(*variant) for variant in VARIANTS],
                'goal_p50_ms': GOAL_P50_MS,
                'cuda_device': torch.cuda.get_device_name(device) if kind == 'cuda' else None}
    return save_results(args.out, NAME, mode, machine, settings, results, notes)


if __name__ == '__main__':
    sys.exit(main())
