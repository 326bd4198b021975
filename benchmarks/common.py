"""Shared helpers of the benchmark scripts: machine facts, threads, statistics, JSON, models.

Every benchmark prints its figures and writes one JSON document (``--out``; default
``benchmarks/results/<name>.json``, ``<name>.quick.json`` with ``--quick``) holding the figures
together with the machine they were measured on (CPU model, cores, torch version, load) and the
settings used. Intermediate files (rendered worlds, bundles, training runs, node logs) go under
``artifacts/benchmarks/`` (ignored by git) or ``$MSPR_BENCHMARK_WORK``.

The node helpers reuse the test harness (``test/ros_harness.py``): the same isolated ROS
domain, transport and process-group handling as the node tests, except that the node gets the
benchmark's torch thread count instead of the tests' single thread.
"""
import argparse
from dataclasses import asdict, dataclass, is_dataclass, replace
import datetime
import importlib.util
import json
import math
import os
from pathlib import Path
import platform
import subprocess
import sys
import threading
import time
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseWithCovarianceStamped
import numpy as np
import psutil
import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from tf2_msgs.msg import TFMessage
import torch
import yaml

from mspr_ros.bundle import save_bundle
from mspr_ros.geometry.transforms import Transform
from mspr_ros.model.config import ModelConfig
from mspr_ros.model.ms_transformer import build_model
from mspr_ros.ros.conversions import ns_to_stamp, rgb_to_image_msg, stamp_to_ns
from mspr_ros.ros.conversions import transform_to_msg
from mspr_ros.ros.node import POSE_QOS as NODE_POSE_QOS
from mspr_training.config import load_config
from mspr_training.export import git_commit
from mspr_training.synth import build_world, Intrinsics, plan_sequences
from mspr_training.synth.sequences import render_frames

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / 'benchmarks' / 'results'
# Rendered worlds, bundles, training runs and node logs; the smoke test points it at a tmp dir.
WORK_DIR = Path(os.environ.get('MSPR_BENCHMARK_WORK', REPO / 'artifacts' / 'benchmarks'))
SCENE_NAMES = ('atrium', 'corridor', 'lab')
MODEL_SIZES = ('tiny', 'demo', 'paper')
CAMERA_FRAME = 'camera_optical'
NODE_NAME = 'mspr_localizer'
# First domain offsets of the benchmarks (ros_harness.domain_id: pid-based ids in 1..101, as the
# tests draw theirs); a domain where another node is already visible is skipped.
DOMAIN_OFFSETS = {'latency': 85, 'echo': 90, 'stream': 95}
DOMAIN_ATTEMPTS = 5
# Long enough for localhost discovery to show a node already on the domain.
DOMAIN_PROBE_S = 1.5


def _load_ros_harness():
    """Import ``test/ros_harness.py``, the project's helpers for nodes on isolated domains.

    ``test/`` is not a package; the module is registered under its own name, so the tests and
    the benchmarks share one instance when both run in a process.
    """
    if 'ros_harness' in sys.modules:
        return sys.modules['ros_harness']
    spec = importlib.util.spec_from_file_location('ros_harness',
                                                  REPO / 'test' / 'ros_harness.py')
    module = importlib.util.module_from_spec(spec)
    sys.modules['ros_harness'] = module
    spec.loader.exec_module(module)
    return module


ros_harness = _load_ros_harness()


# ------------------------------------------------------------------------------- machine facts

@dataclass
class MachineInfo:
    """Where a figure was measured.

    Attributes:
        cpu_model: ``model name`` of /proc/cpuinfo (``platform.processor()`` elsewhere).
        logical_cores: CPUs the OS reports.
        usable_cores: CPUs this process may run on (affinity).
        memory_gib: physical memory.
        torch_version, python_version, platform: software.
        cuda_device: name of CUDA device 0, None without CUDA.
        git_commit: the checkout's commit ('unknown' outside git).
        date_utc: ISO time of the measurement start.
        load_average_start: 1/5/15-minute load averages when the benchmark started.
    """

    cpu_model: str
    logical_cores: int
    usable_cores: int
    memory_gib: float
    torch_version: str
    python_version: str
    platform: str
    cuda_device: Optional[str]
    git_commit: str
    date_utc: str
    load_average_start: List[float]


def cpu_model() -> str:
    """Return the CPU model name."""
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.lower().startswith('model name'):
                return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or 'unknown'


def machine_info() -> MachineInfo:
    """Return the facts of this machine now."""
    return MachineInfo(
        cpu_model=cpu_model(), logical_cores=os.cpu_count() or 0,
        usable_cores=len(os.sched_getaffinity(0)),
        memory_gib=round(psutil.virtual_memory().total / 2 ** 30, 1),
        torch_version=torch.__version__, python_version=platform.python_version(),
        platform=platform.platform(),
        cuda_device=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        git_commit=git_commit(),
        date_utc=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
        load_average_start=[round(v, 2) for v in os.getloadavg()])


def start_report(threads: int) -> Tuple[MachineInfo, List[str]]:
    """Print the machine line; return it and the run's notes (a contention warning, if any)."""
    machine = machine_info()
    print_machine(machine, threads)
    return machine, [note for note in [contention_note(machine, threads)] if note]


def contention_note(machine: MachineInfo, threads: int) -> Optional[str]:
    """Return a warning when other processes load the CPUs this benchmark needs, else None."""
    load = machine.load_average_start[0]
    # Cores not needed by the measured threads; half a core of other work is tolerated.
    spare = machine.usable_cores - threads
    if load > spare + 0.5:
        return (f'the machine was busy: load average {load:.2f} on {machine.usable_cores} '
                f'cores when the benchmark started, so the figures are slower than on an idle '
                f'machine (ratios measured side by side stay comparable)')
    return None


def set_threads(threads: int) -> None:
    """Use ``threads`` intra-op threads here and in every child process started afterwards."""
    torch.set_num_threads(threads)
    os.environ['OMP_NUM_THREADS'] = str(threads)


# ------------------------------------------------------------------------------- statistics

@dataclass
class Summary:
    """Distribution of a sample of durations (milliseconds) or other values."""

    count: int
    mean: float
    p50: float
    p95: float
    p99: float
    min: float
    max: float


def summarise(values: Iterable[float]) -> Summary:
    """Return count, mean, 50/95/99th percentiles, min and max of ``values``.

    Raises:
        ValueError: when ``values`` is empty or holds a non-finite number.
    """
    array = np.asarray(list(values), dtype=np.float64)
    if array.size == 0:
        raise ValueError('no values to summarise')
    if not np.isfinite(array).all():
        raise ValueError(f'non-finite values in the sample: {array[~np.isfinite(array)][:5]}')
    p50, p95, p99 = np.percentile(array, [50, 95, 99])
    return Summary(count=int(array.size), mean=float(array.mean()), p50=float(p50),
                   p95=float(p95), p99=float(p99), min=float(array.min()),
                   max=float(array.max()))


# ------------------------------------------------------------------------------- command line

def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--smoke``, ``--quick``, ``--threads`` and ``--out`` to ``parser``."""
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument('--quick', action='store_true',
                      help='reduced sizes (make benchmarks); default out <name>.quick.json')
    mode.add_argument('--smoke', action='store_true',
                      help='tiny sizes, a few seconds: checks that the script works, the '
                           'figures mean nothing')
    parser.add_argument('--threads', type=int, default=2,
                        help='torch intra-op threads of every measured process (default 2)')
    parser.add_argument('--out', type=Path, default=None, help='JSON file to write')
    parser.add_argument('--omp-wait-policy', choices=('inherit', 'passive', 'active'),
                        default='inherit',
                        help="OpenMP waiting of this process and of the node it starts: "
                             "'passive' (idle threads sleep instead of spinning) keeps figures "
                             "stable on a machine shared with other work (benchmarks/README.md);"
                             " default: whatever the environment says")


def apply_omp_wait_policy(args: argparse.Namespace) -> None:
    """Re-run this script with ``OMP_WAIT_POLICY`` as ``--omp-wait-policy`` asks.

    OpenMP reads the policy once, when torch loads it, so changing it means starting again;
    the node inherits the environment.
    """
    if args.omp_wait_policy == 'inherit':
        return
    wanted = args.omp_wait_policy.upper()
    if os.environ.get('OMP_WAIT_POLICY') != wanted:
        sys.stdout.flush()
        os.execve(sys.executable, [sys.executable] + sys.argv,
                  dict(os.environ, OMP_WAIT_POLICY=wanted))


def omp_wait_policy() -> str:
    """Return the OpenMP wait policy in force ('default' when the environment sets none)."""
    return os.environ.get('OMP_WAIT_POLICY', 'default')


def run_mode(args: argparse.Namespace) -> str:
    """Return 'smoke', 'quick' or 'full'."""
    return 'smoke' if args.smoke else 'quick' if args.quick else 'full'


def default_out(name: str, mode: str) -> Path:
    """Return the default JSON path of benchmark ``name`` in ``mode``.

    Smoke runs never overwrite the recorded results: they go to the work folder.
    """
    if mode == 'smoke':
        return WORK_DIR / 'smoke' / f'{name}.json'
    return RESULTS_DIR / (f'{name}.json' if mode == 'full' else f'{name}.quick.json')


def jsonable(value: Any) -> Any:
    """Return ``value`` as plain JSON data (dataclasses, numpy, paths; NaN/inf become None)."""
    if is_dataclass(value) and not isinstance(value, type):
        return jsonable(asdict(value))
    if isinstance(value, dict):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(item) for item in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        return jsonable(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def write_results(path: Path, name: str, mode: str, machine: MachineInfo,
                  settings: Dict[str, Any], results: Dict[str, Any],
                  notes: Sequence[str] = ()) -> Path:
    """Write one benchmark's JSON document and return its path.

    Layout: ``benchmark``, ``mode``, ``machine``, ``load_average_end``, ``settings`` (with the
    OpenMP wait policy in force), ``results`` (benchmark-specific) and ``notes`` (caveats
    printed during the run).
    """
    document = {
        'benchmark': name, 'mode': mode, 'machine': machine,
        'load_average_end': [round(v, 2) for v in os.getloadavg()],
        'settings': {**settings, 'omp_wait_policy': omp_wait_policy()},
        'results': results, 'notes': list(notes),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(jsonable(document), indent=2, allow_nan=False) + '\n')
    return path


def print_machine(machine: MachineInfo, threads: int) -> None:
    """Print the one-line machine description every benchmark starts with."""
    cuda = machine.cuda_device or 'no CUDA'
    print(f'{machine.cpu_model}, {machine.usable_cores}/{machine.logical_cores} cores, '
          f'torch {machine.torch_version}, {cuda}, {threads} threads, OpenMP wait policy '
          f'{omp_wait_policy()}, load {machine.load_average_start[0]:.2f} '
          f'({machine.date_utc})', flush=True)


# ------------------------------------------------------------------------------- models

def model_config(size: str, num_scenes: int = len(SCENE_NAMES)) -> ModelConfig:
    """Return the model configuration of a benchmark size.

    - 'tiny': the test suite's model (Lite0 ImageNet trunk, d=32, 1+1 layers, maps pooled 2x).
    - 'demo': the model of the ``synth_demo`` training config (d=64, 2+2 layers, pooled 2x).
    - 'paper': the paper's transformer (d=256, 8 heads, 6+6 layers per branch, 224x224, no
      pooling) on the Lite0 ImageNet trunk (same stage widths as B0). B0's ImageNet weights
      are not available offline, and a randomly initialised B0 produces denormal activations
      that slow CPUs down ~10x, which trained weights do not (see benchmarks/model_speed.py).
    """
    if size == 'tiny':
        return ModelConfig(num_scenes=num_scenes, backbone='efficientnet_lite0',
                           backbone_weights='imagenet', hidden_dim=32, nheads=4,
                           dim_feedforward=32, enc_layers_t=1, dec_layers_t=1,
                           enc_layers_rot=1, dec_layers_rot=1, feature_pool=2)
    if size == 'demo':
        return replace(load_config('synth_demo').model, num_scenes=num_scenes)
    if size == 'paper':
        return ModelConfig(num_scenes=num_scenes, backbone='efficientnet_lite0',
                           backbone_weights='imagenet')
    raise ValueError(f'unknown model size {size!r}; choose from {MODEL_SIZES}')


def parameter_count(model: torch.nn.Module) -> int:
    """Return the number of parameters of ``model``."""
    return sum(p.numel() for p in model.parameters())


def save_random_bundle(path: Path, cfg: ModelConfig, seed: int = 0) -> tuple:
    """Save a seeded model of ``cfg`` (random heads) as a bundle; return (path, parameters).

    Timing does not depend on the head weights; the backbone keeps its ImageNet weights.
    """
    torch.manual_seed(seed)
    model = build_model(cfg)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_bundle(path, model, cfg, list(SCENE_NAMES)[:cfg.num_scenes],
                provenance={'source': 'benchmarks/common.py random heads for timing'})
    return path, parameter_count(model)


# ------------------------------------------------------------------------------- images

def rendered_frames(count: int, size: tuple = (640, 480), seed: int = 0) -> List[np.ndarray]:
    """Return ``count`` rendered ``H x W x 3`` uint8 frames of the synthetic world.

    Frames walk each scene's test path in turn, so consecutive frames differ like a camera's.
    """
    world = build_world(seed, len(SCENE_NAMES))
    per_scene = -(-count // len(world.scenes))
    plans = [plan for plan in plan_sequences(world, train_frames=1, test_frames=per_scene,
                                             train_sequences=1, test_sequences=1)
             if plan.split == 'test']
    frames = [frame.rgb for frame in render_frames(world, plans, Intrinsics.from_fov(*size))]
    return frames[:count]


def parse_size(text: str) -> tuple:
    """Parse ``WIDTHxHEIGHT`` (e.g. 640x480) for argparse."""
    try:
        width, height = (int(v) for v in text.lower().split('x'))
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected WIDTHxHEIGHT, got {text!r}') from None
    if width < 16 or height < 16:
        raise argparse.ArgumentTypeError(f'image size {text!r} is too small (min 16x16)')
    return width, height


# ------------------------------------------------------------------------------- the node

def parse_node_param(text: str) -> tuple:
    """Parse ``name:=value`` (value as YAML, like ``--ros-args -p``) for argparse."""
    name, sep, raw = text.partition(':=')
    if not sep or not name:
        raise argparse.ArgumentTypeError(f'expected NAME:=VALUE, got {text!r}')
    try:
        return name, yaml.safe_load(raw)
    except yaml.YAMLError as error:
        raise argparse.ArgumentTypeError(f'{text!r}: value is not YAML: {error}') from None


def add_node_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--node-param NAME:=VALUE`` (repeatable) to a parser of a node benchmark."""
    parser.add_argument('--node-param', dest='node_params', type=parse_node_param,
                        action='append', default=[], metavar='NAME:=VALUE',
                        help='extra node parameter (repeatable), e.g. '
                             'transform_publish_period:=0.0')


def node_parameters(weights: Path, device: str, fp16: bool = False,
                    **overrides: Any) -> Dict[str, Any]:
    """Return the node parameters of a benchmark run.

    Every frame must produce a pose (the benchmarks match poses to images by stamp), so the
    gate accepts any scene confidence; there is no odometry, so the node publishes
    ``map -> base_link`` directly. Everything else keeps the node's defaults.
    """
    params = {'weights': str(weights), 'device': device, 'fp16': fp16,
              'min_scene_confidence': 0.0, 'odom_frame_id': '', 'diagnostics_period': 0.5}
    params.update(overrides)
    return params


def node_command(weights: Path, device: str, fp16: bool, **params: Any) -> List[str]:
    """Return the command line of the localizer node with :func:`node_parameters`."""
    return [sys.executable, '-m', 'mspr_ros.ros.node', '--ros-args', '-r',
            f'__node:={NODE_NAME}'] + ros_harness.param_args(
                node_parameters(weights, device, fp16, **params))


def echo_command() -> List[str]:
    """Return the command line of the echo node (:func:`echo_node_main`)."""
    return [sys.executable, str(Path(__file__).resolve()), 'echo']


class BenchmarkNode(ros_harness.NodeProcess):
    """A node process (``command``) in its own process group with ``threads`` torch threads.

    ``NodeProcess`` pins test nodes to one OpenMP thread; a latency comparison needs the node
    and the in-process Localizer on the same thread count.
    """

    def __init__(self, domain: int, log_path: Path, command: Sequence[str], threads: int):
        """Start ``command`` on ROS domain ``domain``, its output going to ``log_path``."""
        self.name = NODE_NAME
        self.namespace = ''
        self.log_path = Path(log_path)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, 'w')
        self.process = subprocess.Popen(
            list(command), cwd=REPO,
            env=ros_harness.ros_env(domain, OMP_NUM_THREADS=str(threads)),
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)

    def resident_bytes(self) -> int:
        """Resident memory of the node process and its children (bytes)."""
        process = psutil.Process(self.process.pid)
        processes = [process] + process.children(recursive=True)
        return sum(p.memory_info().rss for p in processes)


def gpu_memory_mib(pid: int) -> Optional[float]:
    """GPU memory used by process ``pid`` (MiB, from nvidia-smi), None when unavailable."""
    if not torch.cuda.is_available():
        return None
    try:
        result = subprocess.run(
            ['nvidia-smi', '--query-compute-apps=pid,used_memory',
             '--format=csv,noheader,nounits'], capture_output=True, text=True, timeout=10,
            check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    pids = {pid} | {child.pid for child in psutil.Process(pid).children(recursive=True)}
    used = [float(memory) for line in result.stdout.splitlines()
            for found, memory in [line.split(',')] if int(found) in pids]
    return sum(used) if used else 0.0


class StampedArrivals:
    """Arrival times of stamped messages, keyed by header stamp (ns), with waits on them.

    The callback records ``time.perf_counter()`` and ``time.time_ns()`` on arrival, in the
    executor thread, so a waiting main thread does not add its wake-up delay to a latency.
    """

    def __init__(self) -> None:
        """Start empty."""
        self._arrived: Dict[int, tuple] = {}
        self._changed = threading.Condition()

    def callback(self, msg: Any) -> None:
        """Subscription callback: record the message's stamp and the arrival time."""
        arrival = (time.perf_counter(), time.time_ns())
        stamp = stamp_to_ns(msg.header.stamp)
        with self._changed:
            self._arrived.setdefault(stamp, arrival)
            self._changed.notify_all()

    def wait(self, stamp_ns: int, timeout: float) -> tuple:
        """Return ``(perf_counter s, time_ns)`` of the arrival of ``stamp_ns``.

        Raises:
            TimeoutError: nothing with that stamp arrived within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        with self._changed:
            while stamp_ns not in self._arrived:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f'no message stamped {stamp_ns} within {timeout:.0f} s')
                self._changed.wait(remaining)
            return self._arrived[stamp_ns]

    def snapshot(self) -> Dict[int, tuple]:
        """Return a copy of stamp -> arrival."""
        with self._changed:
            return dict(self._arrived)


def stage_means(values: Dict[str, str]) -> Dict[str, float]:
    """Return the node's mean stage latencies (ms) from its diagnostics key-values."""
    stages = {}
    for stage in ('decode', 'preprocess', 'inference', 'publish', 'total'):
        key = f'{stage} latency mean (ms)'
        if key not in values:
            raise KeyError(f'the node diagnostics lack {key!r} (keys: {sorted(values)})')
        stages[stage] = float(values[key])
    return stages


# Camera 0.2 m ahead of and 0.5 m above the base, optical axis along the base's x axis.
BASE_TO_CAMERA = Transform.from_xyz_rpy([0.2, 0.0, 0.5], [-math.pi / 2, 0.0, -math.pi / 2])
IMAGE_QOS = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
POSE_QOS = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL)
# Importing torch and rclpy and loading the paper-size model on a busy 2-core machine.
START_TIMEOUT_S = 180.0


def free_domain(first_offset: int) -> int:
    """Return a ROS domain id (1..101) on which no other node is visible.

    Benchmarks run beside test suites and other benchmark runs (a CI copy of the repo runs the
    smoke tests); two localizer nodes on one domain would answer each other's images.

    Raises:
        RuntimeError: every candidate domain is in use.
    """
    probe_name = 'mspr_benchmark_domain_probe'
    for offset in range(first_offset, first_offset + DOMAIN_ATTEMPTS):
        domain = ros_harness.domain_id(offset)
        client = ros_harness.RosClient(domain, name=probe_name)
        try:
            # Nothing to wait on: discovery announces other participants within this time.
            time.sleep(DOMAIN_PROBE_S)
            others = [name for name in client.node.get_node_names() if name != probe_name]
        finally:
            client.close()
        if not others:
            return domain
    raise RuntimeError(f'no free ROS domain among {DOMAIN_ATTEMPTS} candidates')


class NodeSession:
    """A benchmark node plus this process's client: image publisher, pose and diagnostics.

    The client publishes ``base_link -> camera_optical`` on ``/tf_static`` (as a robot's
    state publisher would), images on ``/image`` and records every ``~/pose`` arrival.
    Use as a context manager; leaving it stops the node and the client.
    """

    def __init__(self, name: str, command: Sequence[str], threads: int,
                 log_path: Path) -> None:
        """Start ``command`` (:func:`node_command` or :func:`echo_command`) and the client.

        Both run on a free ROS domain (see :func:`free_domain`); ``name`` picks its offsets.
        """
        domain = free_domain(DOMAIN_OFFSETS[name])
        self.node = BenchmarkNode(domain, log_path, command, threads)
        self.client: Optional[ros_harness.RosClient] = None
        try:
            self.client = ros_harness.RosClient(domain, name=f'mspr_benchmark_{name}')
            self.arrivals = StampedArrivals()
            self.client.node.create_subscription(
                PoseWithCovarianceStamped, f'/{NODE_NAME}/pose', self.arrivals.callback,
                POSE_QOS)
            self.diagnostics = self.client.subscribe(DiagnosticArray, '/diagnostics')
            self.images = self.client.publisher(Image, '/image', IMAGE_QOS)
            tf_static = self.client.publisher(TFMessage, '/tf_static', ros_harness.TF_STATIC_QOS)
            tf_static.publish(TFMessage(transforms=[transform_to_msg(
                BASE_TO_CAMERA, 'base_link', CAMERA_FRAME, self.client.now_ns())]))
            self.node.wait_active(START_TIMEOUT_S)
            self.client.wait_for_subscribers(self.images, timeout=START_TIMEOUT_S)
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> 'NodeSession':
        """Return the running session."""
        return self

    def __exit__(self, *exc_info: Any) -> None:
        """Stop the client and the node."""
        self.close()

    def close(self) -> None:
        """Stop the client and the node (idempotent)."""
        if self.client is not None:
            self.client.close()
            self.client = None
        if self.node.process.poll() is None:
            self.node.stop()

    def image_messages(self, frames: Sequence[np.ndarray]) -> List[Image]:
        """Return one rgb8 ``Image`` per frame (stamps are set at publish time)."""
        return [rgb_to_image_msg(rgb, 'rgb8', 0, CAMERA_FRAME) for rgb in frames]

    def publish(self, msg: Image) -> tuple:
        """Stamp ``msg`` now and publish it; return ``(stamp_ns, perf_counter s before)``."""
        stamp_ns = self.client.now_ns()
        msg.header.stamp = ns_to_stamp(stamp_ns)
        started = time.perf_counter()
        self.images.publish(msg)
        return stamp_ns, started

    def round_trip_ms(self, msg: Image, timeout: float) -> float:
        """Publish ``msg`` and wait for its pose; return image publish -> pose arrival (ms).

        Raises:
            RuntimeError: no pose within ``timeout`` (with the end of the node's log).
        """
        stamp_ns, started = self.publish(msg)
        try:
            arrived, _ = self.arrivals.wait(stamp_ns, timeout)
        except TimeoutError as error:
            raise RuntimeError(f'{error}: the node answered no pose for the frame; node log '
                               f'{self.node.log_path}:\n{self.node.output()[-3000:]}') from None
        return 1e3 * (arrived - started)

    def first_pose(self, msg: Image, timeout: float = START_TIMEOUT_S,
                   resend_s: float = 5.0) -> None:
        """Publish ``msg`` until a pose answers one of the copies (the first frame's warm-up).

        Right after discovery the large-data transport may still be connecting, and a
        best-effort subscription then loses the frame; a camera just sends the next one.

        Raises:
            RuntimeError: no pose within ``timeout`` (with the end of the node's log).
        """
        deadline = time.monotonic() + timeout
        sent: List[int] = []
        while time.monotonic() < deadline:
            sent.append(self.publish(msg)[0])
            wait_until = min(deadline, time.monotonic() + resend_s)
            while time.monotonic() < wait_until:
                if any(stamp in self.arrivals.snapshot() for stamp in sent):
                    return
                try:
                    self.arrivals.wait(sent[-1], max(0.0, min(0.1, wait_until - time.monotonic())))
                    return
                except TimeoutError:
                    continue
        raise RuntimeError(f'no pose for {len(sent)} copies of the first frame within '
                           f'{timeout:.0f} s; node log {self.node.log_path}:\n'
                           f'{self.node.output()[-3000:]}')

    def diagnostics_after(self, time_ns: int, timeout: float = 30.0) -> Dict[str, str]:
        """Return the key-values of the first localizer status stamped after ``time_ns``."""
        def newer(msg: DiagnosticArray) -> bool:
            return (stamp_to_ns(msg.header.stamp) > time_ns
                    and ros_harness.own_status(msg, NODE_NAME) is not None)
        msg = self.diagnostics.wait_for(newer, timeout, 'the node diagnostics')
        return ros_harness.diagnostic_values(ros_harness.own_status(msg, NODE_NAME))


def echo_node_main() -> None:
    """Run the echo node: each image on ``image`` comes back at once on ``~/pose``.

    The pose is empty but carries the image's header, on the localizer's topic, QoS and
    executor (single-threaded), so its round trip is the floor that any
    Python ROS node with this interface pays: DDS both ways, (de)serialising the image and the
    executor hand-offs, without decoding or inference.
    """
    rclpy.init()
    node = rclpy.create_node(NODE_NAME)
    poses = node.create_publisher(PoseWithCovarianceStamped, '~/pose', NODE_POSE_QOS)

    def echo(image: Image) -> None:
        poses.publish(PoseWithCovarianceStamped(header=image.header))

    node.create_subscription(Image, 'image', echo, IMAGE_QOS)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    print('active: waiting for images (echo node)', flush=True)
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == '__main__':
    if sys.argv[1:] != ['echo']:
        sys.exit(f'usage: {sys.argv[0]} echo   (the echo node of benchmarks/latency.py)')
    echo_node_main()
