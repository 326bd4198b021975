"""End-to-end latency of the node against the core ``Localizer`` alone, on the same frames.

For each model size (tiny, demo, paper; see ``common.models.model_config``) one bundle is saved and
loaded twice: by a ``Localizer`` in this process and by the node (``python -m mspr_ros.ros.node``)
in its own process, both with the same torch thread count. Frames are rendered 640x480 rgb8
images of the synthetic world. Per frame, in rotating order so that load changes on a shared
machine hit all alike, and never at the same time:

- direct: ``Localizer.localize(rgb)`` (preprocess + inference + result), wall clock, called
  from a worker thread as the node's inference worker calls it (and, for information, from
  the main thread);
- node: the ``sensor_msgs/Image`` published over DDS -> the ``~/pose`` with the same header
  stamp received here (one frame in flight: the next image is sent after the pose arrived,
  so this is latency, not queueing; the node subscribes reliably, ``image_qos: reliable``,
  because a lost frame would never be answered).

Printed and written: both distributions, the ratio node/direct (target < 1.15 on the CPU), the
node's per-stage means from its ``/diagnostics`` (decode, preprocess, inference, publish, total)
and what remains (DDS both ways, serialisation, executor hand-offs). That remainder is set
against an echo node (``benchmarks/echo_node.py``: same topics, QoS and executor, answers each
image at once with an empty pose), the floor of any Python node with this interface. With CUDA,
the same for fp32 and fp16 on the GPU; without, a note says it was skipped
(``benchmarks/gpu_latency.py`` times the precisions and CUDA graphs of the Localizer alone).

Usage: ``python benchmarks/latency.py [--quick | --smoke] [--models tiny demo paper]``
"""
import argparse
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
import sys
import tempfile
import time
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from common.cli import add_common_arguments, add_node_arguments, begin, parse_size, run_mode
from common.frames import rendered_frames
from common.models import model_config, MODEL_SIZES, save_random_bundle
from common.node_session import ECHO_PROGRAM, node_parameters, NodeSession, stage_means
from common.results import save_results, WORK_DIR
from common.stats import summarise, Summary
from mspr_ros.localizer import Localizer
from mspr_ros.ros.diagnostics import LATENCY_WINDOW
from mspr_ros.runtime.allocator import retain_freed_memory

NAME = 'latency'
TARGET_RATIO = 1.15
NODE_IMAGE_QOS = 'reliable'
# (frames, warm-up frames) per mode.
SIZES = {'full': (50, 5), 'quick': (20, 3), 'smoke': (3, 2)}


@dataclass
class LatencyResult:
    """Node vs direct latency of one model on one device (milliseconds).

    Attributes:
        model: size name; ``parameters`` its parameter count.
        device, precision: 'cpu'/'cuda' and 'fp32'/'fp16'.
        direct_ms: ``Localizer.localize`` wall clock in a worker thread, as the node calls
            it (the reference of the ratios); ``direct_main_thread_ms`` the same call in the
            main thread; ``node_ms`` image publish -> pose.
        ratio_p50, ratio_mean: node over direct, of medians and of means.
        direct_stages_ms: the Localizer's own preprocess/inference means.
        node_stages_ms: the node's decode/preprocess/inference/publish/total means.
        node_stages_frames: how many frames those means cover (the measured ones when the
            node's diagnostics window holds them all, else its last window).
        outside_worker_ms: node mean minus the worker's total: DDS both ways, (de)serialisation
            and executor hand-offs.
    """

    model: str
    parameters: int
    device: str
    precision: str
    direct_ms: Summary
    direct_main_thread_ms: Summary
    node_ms: Summary
    ratio_p50: float
    ratio_mean: float
    direct_stages_ms: Dict[str, float]
    node_stages_ms: Dict[str, float]
    node_stages_frames: int
    outside_worker_ms: float


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    add_common_arguments(parser)
    add_node_arguments(parser)
    parser.add_argument('--models', nargs='+', choices=MODEL_SIZES, default=None,
                        help='model sizes (default: all; smoke: tiny)')
    parser.add_argument('--frames', type=int, default=None, help='measured frames per model')
    parser.add_argument('--warmup', type=int, default=None, help='warm-up frames per model')
    parser.add_argument('--image-size', type=parse_size, default=None,
                        help='WIDTHxHEIGHT of the frames (default 640x480; smoke 160x120)')
    parser.add_argument('--skip-cuda', action='store_true', help='CPU only')
    parser.add_argument('--timeout', type=float, default=120.0,
                        help='seconds to wait for one pose before giving up')
    args = parser.parse_args(argv)
    mode = run_mode(args)
    frames, warmup = SIZES[mode]
    args.frames = args.frames if args.frames is not None else frames
    args.warmup = args.warmup if args.warmup is not None else warmup
    args.models = args.models or (['tiny'] if mode == 'smoke' else list(MODEL_SIZES))
    args.image_size = args.image_size or ((160, 120) if mode == 'smoke' else (640, 480))
    if args.frames < 1 or args.warmup < 1:
        parser.error('--frames and --warmup must be at least 1')
    return args


def stage_means_of_measured(before: Dict[str, str], after: Dict[str, str],
                            measured: int) -> tuple:
    """Return the node's stage means over the measured frames and how many frames they cover.

    The node reports means over its last ``LATENCY_WINDOW`` frames. When warm-up and measured
    frames fit in that window, the warm-up part is subtracted out exactly; otherwise the last
    window is reported as is.
    """
    done_before = int(before['frames processed'])
    done_after = int(after['frames processed'])
    means_before, means_after = stage_means(before), stage_means(after)
    if done_after != done_before + measured:
        raise RuntimeError(f'the node processed {done_after - done_before} frames while '
                           f'{measured} were measured')
    if done_after > LATENCY_WINDOW:
        return means_after, min(done_after, LATENCY_WINDOW)
    return {stage: (means_after[stage] * done_after - means_before[stage] * done_before)
            / measured for stage in means_after}, measured


class DirectTimer:
    """Times ``Localizer.localize`` on frames, in a long-lived worker thread or the caller's.

    The node calls the Localizer from its inference worker thread; the direct reference runs
    in a worker thread too, so the ratio shows what the node adds (DDS, decode, executor) and
    not where the call runs. The main-thread figure is kept beside it: under CPU contention
    OpenMP teams of different threads behave differently (see benchmarks/README.md).
    """

    def __init__(self, localizer: Localizer, frames: Sequence[np.ndarray]) -> None:
        """Time ``localizer`` on ``frames``."""
        self.localizer = localizer
        self.frames = frames
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix='direct_localizer')
        self.worker_ms: List[float] = []
        self.main_ms: List[float] = []
        self.preprocess_ms: List[float] = []
        self.inference_ms: List[float] = []

    def warmup(self, count: int) -> None:
        """Warm the model up in both threads."""
        self.worker.submit(self.localizer.warmup, count).result()
        self.localizer.warmup(count)

    def _timed(self, frame: int) -> float:
        started = time.perf_counter()
        self.localizer.localize(self.frames[frame])
        return 1e3 * (time.perf_counter() - started)

    def in_worker(self, frame: int) -> None:
        """Localize frame ``frame`` in the worker thread (the reference)."""
        self.worker_ms.append(self.worker.submit(self._timed, frame).result())
        self.preprocess_ms.append(self.localizer.timings.preprocess_ms)
        self.inference_ms.append(self.localizer.timings.inference_ms)

    def in_main(self, frame: int) -> None:
        """Localize frame ``frame`` in the calling (main) thread."""
        self.main_ms.append(self._timed(frame))

    def close(self) -> None:
        """Stop the worker thread."""
        self.worker.shutdown()


def measure(size: str, device: str, precision: str, frames: List[np.ndarray],
            args: argparse.Namespace, work: str) -> LatencyResult:
    """Measure one model on one device: direct and node, frame by frame, rotating the order."""
    bundle, parameters = save_random_bundle(f'{work}/{size}.safetensors', model_config(size))
    direct = DirectTimer(Localizer.from_file(bundle, device=device, precision=precision),
                         frames)
    log = WORK_DIR / 'logs' / f'latency_node_{size}_{device}_{precision}.log'
    node: List[float] = []
    try:
        direct.warmup(args.warmup)
        # A reliable image subscription: with one frame in flight a lost frame is never answered.
        params = node_parameters(bundle, device, precision,
                                 **{'image_qos': NODE_IMAGE_QOS, **dict(args.node_params)})
        with NodeSession(NAME, args.threads, log, params) as session:
            messages = session.image_messages(frames)
            session.first_pose(messages[0])
            for index in range(1, args.warmup):
                session.round_trip_ms(messages[index % len(messages)], args.timeout)
            before = session.diagnostics_after(time.time_ns())
            for index in range(args.frames):
                frame = index % len(frames)
                runs = [lambda: direct.in_worker(frame), lambda: direct.in_main(frame),
                        lambda: node.append(session.round_trip_ms(messages[frame],
                                                                  args.timeout))]
                for run in runs[index % 3:] + runs[:index % 3]:
                    run()
            after = session.diagnostics_after(time.time_ns())
    finally:
        direct.close()
    node_stages, covered = stage_means_of_measured(before, after, args.frames)
    direct_ms, node_ms = summarise(direct.worker_ms), summarise(node)
    return LatencyResult(
        model=size, parameters=parameters, device=device, precision=precision,
        direct_ms=direct_ms, direct_main_thread_ms=summarise(direct.main_ms), node_ms=node_ms,
        ratio_p50=node_ms.p50 / direct_ms.p50, ratio_mean=node_ms.mean / direct_ms.mean,
        direct_stages_ms={'preprocess': float(np.mean(direct.preprocess_ms)),
                          'inference': float(np.mean(direct.inference_ms))},
        node_stages_ms=node_stages, node_stages_frames=covered,
        outside_worker_ms=node_ms.mean - node_stages['total'])


def measure_echo(frames: List[np.ndarray], args: argparse.Namespace) -> Summary:
    """Return the round trip of the echo node (``benchmarks/echo_node.py``) on the frames.

    The floor any Python node with the localizer's interface pays (DDS both ways, image
    (de)serialisation, executor hand-offs), to set the node's overhead against.
    """
    log = WORK_DIR / 'logs' / 'latency_echo_node.log'
    with NodeSession('echo', args.threads, log, program=ECHO_PROGRAM) as session:
        messages = session.image_messages(frames)
        session.first_pose(messages[0])
        for index in range(1, args.warmup):
            session.round_trip_ms(messages[index % len(messages)], args.timeout)
        return summarise(session.round_trip_ms(messages[index % len(messages)], args.timeout)
                         for index in range(args.frames))


def print_table(results: Sequence[LatencyResult], echo: Summary) -> None:
    """Print the side-by-side table and the stage breakdown."""
    print(f"\n{'model':<7}{'device':<7}{'prec':<6}{'params':>12}{'direct p50':>12}"
          f"{'node p50':>10}{'ratio':>7}{'direct p95':>12}{'node p95':>10}  target"
          f"{'main-thread p50':>17}")
    for r in results:
        verdict = 'ok' if r.ratio_p50 < TARGET_RATIO else f'ABOVE {TARGET_RATIO}'
        print(f'{r.model:<7}{r.device:<7}{r.precision:<6}{r.parameters:>12,}'
              f'{r.direct_ms.p50:>12.1f}{r.node_ms.p50:>10.1f}{r.ratio_p50:>7.3f}'
              f'{r.direct_ms.p95:>12.1f}{r.node_ms.p95:>10.1f}  {verdict:<8}'
              f'{r.direct_main_thread_ms.p50:>15.1f}')
    print(f'\nEcho node (image in, empty pose out, no work): p50 {echo.p50:.1f} ms, p95 '
          f'{echo.p95:.1f} ms: the floor of a Python node with this interface.')
    print('Node overhead p50 (node - direct) and what is left after the echo floor:')
    for r in results:
        overhead = r.node_ms.p50 - r.direct_ms.p50
        print(f'{r.model:<7}{r.device:<7}{r.precision:<6}{overhead:>8.1f} ms, beyond the '
              f'floor {overhead - echo.p50:.1f} ms')
    print('\nNode stages (mean ms): decode, preprocess, inference, publish, total worker; '
          'outside the worker (DDS, executor); direct Localizer preprocess / inference')
    for r in results:
        s = r.node_stages_ms
        print(f'{r.model:<7}{r.device:<7}{r.precision:<6}{s["decode"]:>8.2f}'
              f'{s["preprocess"]:>8.2f}{s["inference"]:>9.2f}{s["publish"]:>8.2f}'
              f'{s["total"]:>9.2f}{r.outside_worker_ms:>9.2f}   '
              f'{r.direct_stages_ms["preprocess"]:.2f} / {r.direct_stages_ms["inference"]:.2f}')


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the benchmark; return the exit status."""
    args = parse_args(argv)
    mode, machine, notes = begin(args)
    # The node tunes its allocator at start-up; the direct reference gets the same process.
    retain_freed_memory()
    settings = [(size, 'cpu', 'fp32') for size in args.models]
    if torch.cuda.is_available() and not args.skip_cuda:
        settings += [(size, 'cuda', precision) for size in args.models
                     for precision in ('fp32', 'fp16')]
    else:
        notes.append('CUDA fp32/fp16 skipped: ' + ('--skip-cuda' if args.skip_cuda
                                                   else 'no CUDA device on this machine'))
    for note in notes:
        print(f'note: {note}')
    print(f'rendering {min(args.frames, 30)} frames of {args.image_size[0]}x'
          f'{args.image_size[1]}', flush=True)
    frames = rendered_frames(min(args.frames, 30), args.image_size)
    print(f'measuring the echo node: {args.warmup} warm-up + {args.frames} frames', flush=True)
    echo = measure_echo(frames, args)
    results = []
    with tempfile.TemporaryDirectory(prefix='mspr_latency_') as work:
        for size, device, precision in settings:
            print(f'measuring {size} on {device} ({precision}): '
                  f'{args.warmup} warm-up + {args.frames} frames', flush=True)
            results.append(measure(size, device, precision, frames, args, work))
    print_table(results, echo)
    return save_results(
        args.out, NAME, mode, machine,
        settings={'threads': args.threads, 'frames': args.frames, 'warmup': args.warmup,
                  'image_size': list(args.image_size), 'encoding': 'rgb8',
                  'target_ratio': TARGET_RATIO, 'models': args.models,
                  'node_parameters': {'image_qos': NODE_IMAGE_QOS, **dict(args.node_params)},
                  'model_configs': {size: model_config(size).to_dict() for size in args.models}},
        results={'measurements': results, 'echo_node_ms': echo}, notes=notes)


if __name__ == '__main__':
    sys.exit(main())
