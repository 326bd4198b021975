"""A long 30 Hz camera stream through the node: memory, latency, dropped frames, backlog.

The node (``python -m mspr_ros.ros.node``, its own process, ``--threads`` torch threads) runs a
bundle of ``--model`` size; this script publishes rendered 640x480 rgb8 frames (cycled) on
``/image`` at ``--rate`` Hz for ``--duration`` seconds (default 600 s, the 10-minute spec;
``--quick`` 60 s) after a warm-up, like a camera driver: on schedule, never waiting for the
node, skipping ticks it could not keep rather than bursting. It records every ``~/pose``
arrival (latency = arrival - image stamp, both the system clock of this machine) and samples
the node process's resident memory (psutil; GPU memory via nvidia-smi where CUDA exists).

Reported: resident memory after the warm-up and at the end (flat within 5 %), latency p50/p95/
p99, frames dropped (published - answered; the node's diagnostics split that into frames its
latest-frame policy superseded, frames it rejected and frames DDS never delivered), and backlog
growth: the median latency of the last minute over that of the first (windows of a third of
the run when it is shorter than three minutes).

The node runs with its fusion on (``fusion: window``, the default; ``results/stream.json``) or,
with ``--fusion none``, off (``results/stream.fusion_none.json``), to set the two side by side.

Usage: ``python benchmarks/stream.py [--quick | --smoke] [--duration S] [--model demo]
[--fusion window|none]``
"""
import argparse
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
from common.node_session import node_parameters, NodeSession
from common.process_memory import gpu_memory_mib
from common.results import default_out, save_results, WORK_DIR
from common.stats import summarise, Summary
from mspr_ros.precision import PRECISIONS
from mspr_ros.ros.param_specs import FUSION_MODES

NAME = 'stream'
MEMORY_TOLERANCE = 0.05
BACKLOG_TOLERANCE = 1.25
MIB = 2 ** 20
# (duration s, warm-up s, distinct frames) per mode.
SIZES = {'full': (600.0, 15.0, 30), 'quick': (60.0, 10.0, 30), 'smoke': (3.0, 1.0, 3)}
SAMPLE_PERIOD_S = 1.0
# How long to wait for the answer to the last frame after the stream stops.
DRAIN_S = 10.0


@dataclass
class StreamCounts:
    """Frames of the measured part of the stream.

    Attributes:
        published: images this script published; ``answered``: poses received for them.
        dropped: published - answered.
        superseded: dropped by the node's latest-frame policy (a newer image replaced it
            before the worker was free).
        rejected: frames the node processed but answered with no pose, by reason.
        not_received: published but never reached the node's image callback: lost by the
            transport or overwritten in the subscription's DDS queue (depth 5 for the node's
            sensor-data QoS) before the node's executor took it.
        publisher_missed_ticks: camera ticks skipped because this script fell behind.
    """

    published: int
    answered: int
    dropped: int
    superseded: int
    rejected: Dict[str, int]
    not_received: int
    publisher_missed_ticks: int


@dataclass
class MemoryReport:
    """Resident memory of the node process (MiB) and GPU memory (MiB, None without CUDA)."""

    rss_start_mib: float
    rss_end_mib: float
    rss_max_mib: float
    rss_growth: float
    rss_series_mib: List[List[float]]
    gpu_start_mib: Optional[float]
    gpu_end_mib: Optional[float]


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    add_common_arguments(parser)
    add_node_arguments(parser)
    parser.add_argument('--duration', type=float, default=None,
                        help='measured seconds (default 600; quick 60; smoke 3)')
    parser.add_argument('--warmup', type=float, default=None, help='warm-up seconds')
    parser.add_argument('--rate', type=float, default=30.0, help='camera rate, Hz')
    parser.add_argument('--model', choices=MODEL_SIZES, default=None,
                        help='model size (default demo; smoke tiny)')
    parser.add_argument('--frames', type=int, default=None, help='distinct frames, cycled')
    parser.add_argument('--image-size', type=parse_size, default=None,
                        help='WIDTHxHEIGHT (default 640x480; smoke 160x120)')
    parser.add_argument('--device', default=None,
                        help="node device (default: 'cuda' when available, else 'cpu')")
    parser.add_argument('--precision', choices=PRECISIONS, default='fp32',
                        help='node precision parameter: fp32 (default), fp16 (CUDA), bf16')
    parser.add_argument('--cuda-graphs', action='store_true',
                        help='node cuda_graphs parameter (CUDA only)')
    parser.add_argument('--fusion', choices=FUSION_MODES, default='window',
                        help="node fusion parameter (default window); 'none' writes "
                             '<name>.fusion_none.json by default')
    args = parser.parse_args(argv)
    mode = run_mode(args)
    if any(name == 'fusion' for name, _ in args.node_params):
        parser.error('set the fusion with --fusion, not --node-param fusion:=...')
    if args.out is None and args.fusion != 'window':
        args.out = default_out(f'{NAME}.fusion_{args.fusion}', mode)
    duration, warmup, frames = SIZES[mode]
    args.duration = args.duration if args.duration is not None else duration
    args.warmup = args.warmup if args.warmup is not None else warmup
    args.frames = args.frames if args.frames is not None else frames
    args.model = args.model or ('tiny' if mode == 'smoke' else 'demo')
    args.image_size = args.image_size or ((160, 120) if mode == 'smoke' else (640, 480))
    args.device = args.device or ('cuda' if torch.cuda.is_available() else 'cpu')
    if args.duration <= 0 or args.warmup < 0 or args.rate <= 0 or args.frames < 1:
        parser.error('--duration and --rate must be positive, --warmup >= 0, --frames >= 1')
    return args


class CameraStream:
    """Publishes images at a fixed rate and samples the node's memory once a second."""

    def __init__(self, session: NodeSession, frames: Sequence[np.ndarray], rate: float):
        """Prepare one message per frame."""
        self.session = session
        self.messages = session.image_messages(frames)
        self.period = 1.0 / rate
        self.published: List[int] = []
        self.missed_ticks = 0
        self.rss_series: List[List[float]] = []
        self._count = 0

    def run(self, duration: float, record: bool) -> None:
        """Publish for ``duration`` seconds; with ``record`` keep stamps and memory samples."""
        start = time.monotonic()
        next_sample = start
        tick = 0
        while True:
            due = start + tick * self.period
            if due - start >= duration:
                return
            now = time.monotonic()
            if due > now:
                time.sleep(due - now)
            stamp_ns, _ = self.session.publish(self.messages[self._count % len(self.messages)])
            self._count += 1
            if record:
                self.published.append(stamp_ns)
            now = time.monotonic()
            if record and now >= next_sample:
                self.rss_series.append([round(now - start, 1),
                                        self.session.resident_bytes() / MIB])
                next_sample = now + SAMPLE_PERIOD_S
            # A camera drops the ticks it missed; it does not burst to catch up.
            behind = int((now - start) / self.period) - tick
            skipped = max(0, behind - 1)
            if record:
                self.missed_ticks += skipped
            tick += 1 + skipped


def window_latencies(published: Sequence[int], latency_by_stamp: Dict[int, float],
                     start_ns: int, end_ns: int) -> List[float]:
    """Return latencies (ms) of the answered frames published in ``[start_ns, end_ns)``."""
    return [latency_by_stamp[s] for s in published
            if start_ns <= s < end_ns and s in latency_by_stamp]


def delta(after: Dict[str, str], before: Dict[str, str], key: str) -> int:
    """Return the growth of an integer diagnostics counter."""
    return int(after[key]) - int(before[key])


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the benchmark; return the exit status."""
    args = parse_args(argv)
    mode, machine, notes = begin(args)
    if args.device == 'cpu':
        notes.append('GPU memory not measured: the node runs on the CPU'
                     + ('' if torch.cuda.is_available() else ' (no CUDA device here)'))
    for note in notes:
        print(f'note: {note}')
    print(f'rendering {args.frames} frames of {args.image_size[0]}x{args.image_size[1]}',
          flush=True)
    frames = rendered_frames(args.frames, args.image_size)
    with tempfile.TemporaryDirectory(prefix='mspr_stream_') as work:
        bundle, parameters = save_random_bundle(f'{work}/{args.model}.safetensors',
                                                model_config(args.model))
        log = WORK_DIR / 'logs' / f'stream_node_{args.model}_{args.device}_{args.fusion}.log'
        params = node_parameters(bundle, args.device, args.precision,
                                 **{'cuda_graphs': args.cuda_graphs, 'fusion': args.fusion,
                                    **dict(args.node_params)})
        with NodeSession(NAME, args.threads, log, params) as session:
            camera = CameraStream(session, frames, args.rate)
            session.first_pose(camera.messages[0])
            print(f'warm-up {args.warmup:.0f} s, then {args.duration:.0f} s at '
                  f'{args.rate:g} Hz ({args.model} model on {args.device}, fusion '
                  f'{args.fusion})', flush=True)
            camera.run(args.warmup, record=False)
            before = session.diagnostics_after(time.time_ns())
            rss_start = session.resident_bytes() / MIB
            gpu_start = gpu_memory_mib(session.node.process.pid)
            camera.run(args.duration, record=True)
            try:
                session.arrivals.wait(camera.published[-1], DRAIN_S)
            except TimeoutError:
                notes.append('the last published frame got no pose (superseded or rejected)')
            rss_end = session.resident_bytes() / MIB
            gpu_end = gpu_memory_mib(session.node.process.pid)
            after = session.diagnostics_after(time.time_ns())
            arrivals = session.arrivals.snapshot()
    published = camera.published
    latency = {stamp: (arrivals[stamp][1] - stamp) / 1e6 for stamp in published
               if stamp in arrivals}
    if not latency:
        raise RuntimeError(f'no pose arrived for any of {len(published)} frames; node log '
                           f'{log}')
    rejected = {key[len('rejected '):]: delta(after, before, key) for key in after
                if key.startswith('rejected ')}
    counts = StreamCounts(
        published=len(published), answered=len(latency),
        dropped=len(published) - len(latency),
        superseded=delta(after, before, 'frames superseded'),
        rejected={reason: count for reason, count in rejected.items() if count},
        not_received=len(published) - delta(after, before, 'frames received'),
        publisher_missed_ticks=camera.missed_ticks)
    span_ns = published[-1] - published[0]
    window_ns = int(min(60e9, span_ns / 3))
    first = summarise(window_latencies(published, latency, published[0],
                                       published[0] + window_ns))
    last = summarise(window_latencies(published, latency, published[-1] - window_ns,
                                      published[-1] + 1))
    series = [sample for index, sample in enumerate(camera.rss_series) if index % 10 == 0]
    memory = MemoryReport(
        rss_start_mib=rss_start, rss_end_mib=rss_end,
        rss_max_mib=max([rss_end] + [mib for _, mib in camera.rss_series]),
        rss_growth=rss_end / rss_start - 1.0, rss_series_mib=series,
        gpu_start_mib=gpu_start, gpu_end_mib=gpu_end)
    overall: Summary = summarise(latency.values())
    backlog_ratio = last.p50 / first.p50
    checks = {'memory_flat_within_5_percent': abs(memory.rss_growth) <= MEMORY_TOLERANCE,
              'no_backlog_growth': backlog_ratio <= BACKLOG_TOLERANCE}
    if gpu_start:
        checks['gpu_memory_flat_within_5_percent'] = (
            abs(gpu_end / gpu_start - 1.0) <= MEMORY_TOLERANCE)
    seconds = span_ns / 1e9
    print(f'\npublished {counts.published} frames in {seconds:.1f} s '
          f'({counts.published / seconds:.1f} Hz; {counts.publisher_missed_ticks} camera '
          f'ticks missed), answered {counts.answered} ({counts.answered / seconds:.1f} Hz)')
    reasons = ', '.join(f'{reason} {count}' for reason, count in counts.rejected.items())
    print(f'dropped {counts.dropped}: superseded by a newer frame {counts.superseded}, '
          f'rejected {sum(counts.rejected.values())}{f" ({reasons})" if reasons else ""}, '
          f'never reached the node\'s callback {counts.not_received}')
    print(f'latency ms: p50 {overall.p50:.1f}  p95 {overall.p95:.1f}  p99 {overall.p99:.1f}  '
          f'max {overall.max:.1f}')
    print(f'backlog: first {window_ns / 1e9:.0f} s p50 {first.p50:.1f} ms, last '
          f'{window_ns / 1e9:.0f} s p50 {last.p50:.1f} ms, ratio {backlog_ratio:.3f} '
          f'({"ok" if checks["no_backlog_growth"] else "GROWING"})')
    print(f'node RSS: start {rss_start:.1f} MiB, end {rss_end:.1f} MiB, max '
          f'{memory.rss_max_mib:.1f} MiB, growth {100 * memory.rss_growth:+.2f} % '
          f'({"flat" if checks["memory_flat_within_5_percent"] else "NOT FLAT"})')
    if gpu_start is not None:
        print(f'GPU memory: start {gpu_start:.0f} MiB, end {gpu_end:.0f} MiB')
    return save_results(
        args.out, NAME, mode, machine,
        settings={'threads': args.threads, 'duration_s': args.duration,
                  'warmup_s': args.warmup, 'rate_hz': args.rate, 'model': args.model,
                  'parameters': parameters, 'model_config': model_config(args.model).to_dict(),
                  'device': args.device, 'precision': args.precision,
                  'cuda_graphs': args.cuda_graphs, 'fusion': args.fusion, 'frames': args.frames,
                  'node_parameters': dict(args.node_params),
                  'image_size': list(args.image_size), 'encoding': 'rgb8'},
        results={'counts': counts, 'latency_ms': overall, 'window_s': window_ns / 1e9,
                 'latency_first_window_ms': first, 'latency_last_window_ms': last,
                 'backlog_ratio': backlog_ratio, 'memory': memory, 'checks': checks,
                 'publish_rate_hz': counts.published / seconds,
                 'answer_rate_hz': counts.answered / seconds},
        notes=notes)


if __name__ == '__main__':
    sys.exit(main())
