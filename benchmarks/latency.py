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

Each model is measured with the fusion on and off side by side (node parameter ``fusion:
window``, the default, and ``none``): two nodes run at once, each answering its own frames, and
the frames rotate over the direct call and both nodes.

Printed and written: the distributions, the ratios node/direct for both fusion settings (target
< 1.15 on the CPU; issue 24: at most 1.05 with the fusion on, demo and paper models), the nodes'
per-stage means from their ``/diagnostics`` (decode, preprocess, inference, tf lookups,
pose_stream = gates + fusion, publish, total) and the fusion's share of the node's time
(pose_stream with the fusion on minus without it, over the node's mean round trip), and what
remains outside the worker (DDS both ways, serialisation, executor hand-offs). That remainder is
set against an echo node (``benchmarks/echo_node.py``: same topics, QoS and executor, answers each
image at once with an empty pose), the floor of any Python node with this interface. With CUDA,
the same for fp32 and fp16 on the GPU; without, a note says it was skipped
(``benchmarks/gpu_latency.py`` times the precisions and CUDA graphs of the Localizer alone).

Usage: ``python benchmarks/latency.py [--quick | --smoke] [--models tiny demo paper]
[--fusion window none]``
"""
import argparse
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
import sys
import tempfile
import time
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

from common.cli import add_common_arguments, add_node_arguments, begin, parse_size, run_mode
from common.frames import rendered_frames
from common.models import model_config, MODEL_SIZES, save_random_bundle
from common.node_session import ECHO_PROGRAM, node_parameters, NodeSession
from common.node_session import stage_means_of_measured
from common.results import save_results, WORK_DIR
from common.stats import summarise, Summary
from mspr_ros.localizer import Localizer
from mspr_ros.ros.param_specs import FUSION_MODES
from mspr_ros.runtime.allocator import retain_freed_memory

NAME = 'latency'
TARGET_RATIO = 1.15
# Issue 24: the node keeps up with its model, fusion on, on these models.
GOAL_RATIO = 1.05
GOAL_MODELS = ('demo', 'paper')
NODE_IMAGE_QOS = 'reliable'
# (frames, warm-up frames) per mode.
SIZES = {'full': (50, 5), 'quick': (20, 3), 'smoke': (3, 2)}
# The node session of each fusion setting (common.node_session.DOMAIN_OFFSETS).
SESSION_NAMES = {'window': 'latency', 'none': 'latency_fusion_none'}


@dataclass
class NodeFigures:
    """The node's latency with one fusion setting (milliseconds).

    Attributes:
        fusion: the node's ``fusion`` parameter ('window' or 'none').
        node_ms: image publish -> pose received.
        ratio_p50, ratio_mean: node over direct, of medians and of means.
        node_stages_ms: the node's decode/preprocess/inference/tf/pose_stream/publish/total
            means.
        node_stages_frames: how many frames those means cover (the measured ones when the
            node's diagnostics window holds them all, else its last window).
        outside_worker_ms: node mean minus the worker's total: DDS both ways, (de)serialisation
            and executor hand-offs. ``~/pose`` leaves inside the publish stage, just before the
            worker stops its clock, so on a loaded machine (the worker preempted after the
            send) this can come out slightly negative.
        pose_stream_share: the pose_stream stage (gates, and the fusion when on) over the node's
            mean round trip.
    """

    fusion: str
    node_ms: Summary
    ratio_p50: float
    ratio_mean: float
    node_stages_ms: Dict[str, float]
    node_stages_frames: int
    outside_worker_ms: float
    pose_stream_share: float


@dataclass
class LatencyResult:
    """Node vs direct latency of one model on one device (milliseconds).

    Attributes:
        model: size name; ``parameters`` its parameter count.
        device, precision: 'cpu'/'cuda' and 'fp32'/'fp16'.
        direct_ms: ``Localizer.localize`` wall clock in a worker thread, as the node calls
            it (the reference of the ratios); ``direct_main_thread_ms`` the same call in the
            main thread.
        direct_stages_ms: the Localizer's own preprocess/inference means.
        nodes: per fusion setting, the node's figures.
        fusion_cost: with both settings measured: ``fusion_ms`` (pose_stream with the fusion
            minus without: the fusion's own time per frame), ``share_of_node`` (that over the
            node's mean round trip with the fusion on) and ``node_p50_difference_ms``; else None.
    """

    model: str
    parameters: int
    device: str
    precision: str
    direct_ms: Summary
    direct_main_thread_ms: Summary
    direct_stages_ms: Dict[str, float]
    nodes: Dict[str, NodeFigures]
    fusion_cost: Optional[Dict[str, float]]


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    add_common_arguments(parser)
    add_node_arguments(parser)
    parser.add_argument('--models', nargs='+', choices=MODEL_SIZES, default=None,
                        help='model sizes (default: all; smoke: tiny)')
    parser.add_argument('--fusion', nargs='+', choices=FUSION_MODES, default=list(FUSION_MODES),
                        help='node fusion settings measured side by side (default: both)')
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
    args.fusion = list(dict.fromkeys(args.fusion))
    if args.frames < 1 or args.warmup < 1:
        parser.error('--frames and --warmup must be at least 1')
    if any(name == 'fusion' for name, _ in args.node_params):
        parser.error('set the fusion with --fusion, not --node-param fusion:=...')
    return args


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


def node_figures(fusion: str, samples: List[float], before: Dict[str, str],
                 after: Dict[str, str], measured: int, direct_ms: Summary) -> NodeFigures:
    """Return one node's figures from its round trips and its diagnostics around them."""
    stages, covered = stage_means_of_measured(before, after, measured)
    node_ms = summarise(samples)
    return NodeFigures(
        fusion=fusion, node_ms=node_ms, ratio_p50=node_ms.p50 / direct_ms.p50,
        ratio_mean=node_ms.mean / direct_ms.mean, node_stages_ms=stages,
        node_stages_frames=covered, outside_worker_ms=node_ms.mean - stages['total'],
        pose_stream_share=stages['pose_stream'] / node_ms.mean)


def fusion_cost(nodes: Dict[str, NodeFigures]) -> Optional[Dict[str, float]]:
    """Return the fusion's own time per frame and its share of the node's, None without both."""
    if not {'window', 'none'} <= set(nodes):
        return None
    on, off = nodes['window'], nodes['none']
    fusion_ms = on.node_stages_ms['pose_stream'] - off.node_stages_ms['pose_stream']
    return {'pose_stream_window_ms': on.node_stages_ms['pose_stream'],
            'pose_stream_none_ms': off.node_stages_ms['pose_stream'],
            'fusion_ms': fusion_ms, 'share_of_node': fusion_ms / on.node_ms.mean,
            'node_p50_difference_ms': on.node_ms.p50 - off.node_ms.p50}


def measure(size: str, device: str, precision: str, frames: List[np.ndarray],
            args: argparse.Namespace, work: str) -> LatencyResult:
    """Measure one model on one device: direct and each node, frame by frame, rotating."""
    bundle, parameters = save_random_bundle(f'{work}/{size}.safetensors', model_config(size))
    direct = DirectTimer(Localizer.from_file(bundle, device=device, precision=precision),
                         frames)
    samples: Dict[str, List[float]] = {fusion: [] for fusion in args.fusion}
    before: Dict[str, Dict[str, str]] = {}
    after: Dict[str, Dict[str, str]] = {}
    try:
        direct.warmup(args.warmup)
        with ExitStack() as stack:
            sessions = {}
            for fusion in args.fusion:
                # A reliable image subscription: one frame in flight, a lost one is never
                # answered.
                params = node_parameters(bundle, device, precision, **{
                    'image_qos': NODE_IMAGE_QOS, 'fusion': fusion, **dict(args.node_params)})
                log = WORK_DIR / 'logs' / f'latency_node_{size}_{device}_{precision}_{fusion}.log'
                sessions[fusion] = stack.enter_context(
                    NodeSession(SESSION_NAMES[fusion], args.threads, log, params))
            messages = {fusion: session.image_messages(frames)
                        for fusion, session in sessions.items()}
            for fusion, session in sessions.items():
                session.first_pose(messages[fusion][0])
                for index in range(1, args.warmup):
                    session.round_trip_ms(messages[fusion][index % len(frames)], args.timeout)
                before[fusion] = session.diagnostics_after(time.time_ns())

            def node_run(fusion: str, frame: int) -> Callable[[], None]:
                return lambda: samples[fusion].append(sessions[fusion].round_trip_ms(
                    messages[fusion][frame], args.timeout))

            for index in range(args.frames):
                frame = index % len(frames)
                runs = [lambda: direct.in_worker(frame), lambda: direct.in_main(frame)]
                runs += [node_run(fusion, frame) for fusion in sessions]
                shift = index % len(runs)
                for run in runs[shift:] + runs[:shift]:
                    run()
            for fusion, session in sessions.items():
                after[fusion] = session.diagnostics_after(time.time_ns())
    finally:
        direct.close()
    direct_ms = summarise(direct.worker_ms)
    nodes = {fusion: node_figures(fusion, samples[fusion], before[fusion], after[fusion],
                                  args.frames, direct_ms) for fusion in args.fusion}
    return LatencyResult(
        model=size, parameters=parameters, device=device, precision=precision,
        direct_ms=direct_ms, direct_main_thread_ms=summarise(direct.main_ms),
        direct_stages_ms={'preprocess': float(np.mean(direct.preprocess_ms)),
                          'inference': float(np.mean(direct.inference_ms))},
        nodes=nodes, fusion_cost=fusion_cost(nodes))


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


def goals(results: Sequence[LatencyResult]) -> Dict[str, object]:
    """Return issue 24's goal per measured CPU model of ``GOAL_MODELS`` (fusion on)."""
    verdicts = {r.model: {'ratio_p50': r.nodes['window'].ratio_p50,
                          'met': r.nodes['window'].ratio_p50 <= GOAL_RATIO}
                for r in results if r.device == 'cpu' and r.model in GOAL_MODELS
                and 'window' in r.nodes}
    return {'ratio_p50_at_most': GOAL_RATIO, 'fusion': 'window', 'models': verdicts}


def print_table(results: Sequence[LatencyResult], echo: Summary) -> None:
    """Print the side-by-side table, the stage breakdown and the fusion's share."""
    print(f"\n{'model':<7}{'device':<7}{'prec':<6}{'fusion':<8}{'params':>12}"
          f"{'direct p50':>12}{'node p50':>10}{'ratio':>7}{'direct p95':>12}{'node p95':>10}"
          f"  target{'main-thread p50':>17}")
    for r in results:
        for fusion, n in r.nodes.items():
            verdict = 'ok' if n.ratio_p50 < TARGET_RATIO else f'ABOVE {TARGET_RATIO}'
            print(f'{r.model:<7}{r.device:<7}{r.precision:<6}{fusion:<8}{r.parameters:>12,}'
                  f'{r.direct_ms.p50:>12.1f}{n.node_ms.p50:>10.1f}{n.ratio_p50:>7.3f}'
                  f'{r.direct_ms.p95:>12.1f}{n.node_ms.p95:>10.1f}  {verdict:<8}'
                  f'{r.direct_main_thread_ms.p50:>15.1f}')
    print(f'\nEcho node (image in, empty pose out, no work): p50 {echo.p50:.1f} ms, p95 '
          f'{echo.p95:.1f} ms: the floor of a Python node with this interface.')
    print('Node overhead p50 (node - direct) and what is left after the echo floor:')
    for r in results:
        for fusion, n in r.nodes.items():
            overhead = n.node_ms.p50 - r.direct_ms.p50
            print(f'{r.model:<7}{r.device:<7}{r.precision:<6}{fusion:<8}{overhead:>8.1f} ms, '
                  f'beyond the floor {overhead - echo.p50:.1f} ms')
    print('\nNode stages (mean ms): decode, preprocess, inference, tf, pose_stream, publish, '
          'total worker; outside the worker (DDS, executor); direct Localizer preprocess / '
          'inference')
    for r in results:
        for fusion, n in r.nodes.items():
            s = n.node_stages_ms
            print(f'{r.model:<7}{r.device:<7}{r.precision:<6}{fusion:<8}'
                  + ''.join(f'{s[stage]:>8.2f}' for stage in (
                      'decode', 'preprocess', 'inference', 'tf', 'pose_stream', 'publish',
                      'total'))
                  + f'{n.outside_worker_ms:>9.2f}   {r.direct_stages_ms["preprocess"]:.2f} / '
                  f'{r.direct_stages_ms["inference"]:.2f}')
    for r in results:
        cost = r.fusion_cost
        if cost is not None:
            print(f"{r.model} {r.device} {r.precision}: the fusion takes "
                  f"{cost['fusion_ms']:.2f} ms per frame (pose_stream "
                  f"{cost['pose_stream_window_ms']:.2f} vs {cost['pose_stream_none_ms']:.2f} "
                  f"ms), {100 * cost['share_of_node']:.1f} % of the node's mean round trip; "
                  f"node/core p50 {r.nodes['window'].ratio_p50:.3f} with it, "
                  f"{r.nodes['none'].ratio_p50:.3f} without")


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
            print(f'measuring {size} on {device} ({precision}), fusion '
                  f"{' and '.join(args.fusion)}: {args.warmup} warm-up + {args.frames} frames",
                  flush=True)
            results.append(measure(size, device, precision, frames, args, work))
    print_table(results, echo)
    verdicts = goals(results)
    for model, verdict in verdicts['models'].items():
        print(f"issue 24 goal, {model} with the fusion on: node/core p50 "
              f"{verdict['ratio_p50']:.3f} (<= {GOAL_RATIO}: "
              f"{'met' if verdict['met'] else 'NOT met'})")
    return save_results(
        args.out, NAME, mode, machine,
        settings={'threads': args.threads, 'frames': args.frames, 'warmup': args.warmup,
                  'image_size': list(args.image_size), 'encoding': 'rgb8',
                  'target_ratio': TARGET_RATIO, 'goal_ratio': GOAL_RATIO,
                  'goal_models': list(GOAL_MODELS), 'models': args.models,
                  'fusion': args.fusion,
                  'node_parameters': {'image_qos': NODE_IMAGE_QOS, **dict(args.node_params)},
                  'model_configs': {size: model_config(size).to_dict() for size in args.models}},
        results={'measurements': results, 'echo_node_ms': echo, 'goals': verdicts},
        notes=notes)


if __name__ == '__main__':
    sys.exit(main())
