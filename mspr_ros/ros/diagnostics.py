"""Runtime statistics of the localizer and their ``/diagnostics`` report.

``LocalizationStats`` is thread-safe and ROS-free: the image callback, the inference worker and
the diagnostics timer all touch it. ``build_status`` turns a ``StatsSnapshot`` into one
``diagnostic_msgs/DiagnosticStatus`` (diagnostic_updater is not available as a wheel, so the
array is written directly, like rtabmap's and cuVSLAM's status).
"""
from collections import Counter, deque
from dataclasses import dataclass, field
import threading
import time
from typing import Deque, Dict, List, Mapping, Optional, Tuple

from diagnostic_msgs.msg import DiagnosticStatus, KeyValue

from mspr_ros.camera.selection import REJECT_REASONS as CAMERA_REJECT_REASONS

STAGES = ('decode', 'preprocess', 'inference', 'tf', 'pose_stream', 'publish', 'total')
# Always listed (with zeros) so that dashboards see stable keys.
REJECT_REASONS = ('stale', 'low_confidence', 'scene_not_allowed', 'jump_translation',
                  'jump_rotation', 'initial_pose', 'tf_unavailable', 'no_extrinsic',
                  'bad_image', 'non_finite', 'inference_error') + CAMERA_REJECT_REASONS
# Rejections that mean the set-up is broken (not the robot's whereabouts): ERROR, not WARN.
FAULT_REASONS = ('no_extrinsic', 'inference_error') + CAMERA_REJECT_REASONS
LOCALIZED, LOST, RELOCALIZING = 'localized', 'lost', 'relocalizing'
TOP_SCENES = 3
RATE_WINDOW_S = 5.0
LATENCY_WINDOW = 100
# A pose accepted within this many seconds counts as "localized".
LOCALIZED_TIMEOUT_S = 5.0
# No image for this long while active is a WARN (AMCL's laser check uses a similar delay).
NO_IMAGE_WARN_S = 5.0


class RateMeter:
    """Events per second over a sliding window of ``window_s`` seconds (monotonic clock)."""

    def __init__(self, window_s: float = RATE_WINDOW_S):
        """Count events of the last ``window_s`` seconds."""
        self._window_s = window_s
        self._times: Deque[float] = deque()

    def tick(self, now: float) -> None:
        """Record one event at monotonic time ``now`` (s)."""
        self._times.append(now)
        self._trim(now)

    def rate(self, now: float) -> float:
        """Events per second in the window ending at ``now``."""
        self._trim(now)
        return len(self._times) / self._window_s

    def _trim(self, now: float) -> None:
        while self._times and self._times[0] < now - self._window_s:
            self._times.popleft()


@dataclass(frozen=True)
class LatencySummary:
    """Mean and maximum of the recent samples of one stage (ms); count of samples."""

    mean_ms: float
    max_ms: float
    count: int


@dataclass(frozen=True)
class StatsSnapshot:
    """A consistent copy of ``LocalizationStats`` for reporting."""

    received: int
    processed: int
    published: int
    superseded: int
    input_rate_hz: float
    output_rate_hz: float
    latency: Dict[str, LatencySummary]
    rejected: Dict[str, int]
    scene: str
    scene_confidence: float
    localized: bool
    last_image_age_s: Optional[float]
    last_reject_reason: str
    last_reject_detail: str = ''
    top_scenes: Tuple[Tuple[str, float], ...] = ()
    last_accepted_stamp_ns: Optional[int] = None
    fusion_window: int = 0
    # The AMCL seeding state (mspr_ros.ros.amcl_seeding); empty without publish_initialpose.
    amcl_seed: Tuple[Tuple[str, str], ...] = ()
    amcl_seed_warning: str = ''
    # fusion.error_correlation in words, and the ~/pose_update stream (filter_updates).
    error_correlation: str = ''
    pose_updates: int = 0
    last_pose_update: str = ''
    # How images are read (camera_model), and whether that is a fault of the set-up.
    camera: str = ''
    camera_warning: bool = False
    camera_builds: int = 0
    # Frames that went through every stage (their times are in ``latency``).
    timed: int = 0


@dataclass
class NodeInfo:
    """Static facts reported with every status (set at configure)."""

    node_name: str
    lifecycle_state: str = 'unconfigured'
    input_topic: str = ''
    device: str = ''
    weights: str = ''
    weights_sha256: str = ''
    scenes: Tuple[str, ...] = ()
    extra: Dict[str, str] = field(default_factory=dict)


class LocalizationStats:
    """Counters, rates and per-stage latencies, safe to update from several threads."""

    def __init__(self, clock=time.monotonic):
        """Start empty; ``clock`` returns seconds (monotonic)."""
        self._clock = clock
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        """Forget everything (at configure)."""
        with self._lock:
            self._received = 0
            self._processed = 0
            self._timed = 0
            self._published = 0
            self._superseded = 0
            self._input_rate = RateMeter()
            self._output_rate = RateMeter()
            self._latency: Dict[str, Deque[float]] = {
                stage: deque(maxlen=LATENCY_WINDOW) for stage in STAGES}
            self._rejected: Counter = Counter()
            self._scene = ''
            self._scene_confidence = float('nan')
            self._last_image_time: Optional[float] = None
            self._last_accept_time: Optional[float] = None
            self._last_reject_reason = ''
            self._last_reject_detail = ''
            self._top_scenes: Tuple[Tuple[str, float], ...] = ()
            self._last_accepted_stamp_ns: Optional[int] = None
            self._fusion_window = 0
            self._amcl_seed: Tuple[Tuple[str, str], ...] = ()
            self._amcl_seed_warning = ''
            self._error_correlation = ''
            self._pose_updates = 0
            self._last_pose_update = ''
            self._camera = ''
            self._camera_warning = False
            self._camera_builds = 0

    def image_received(self, superseded_unprocessed: bool) -> None:
        """Count one incoming image; ``superseded_unprocessed`` if it replaced a waiting one."""
        now = self._clock()
        with self._lock:
            self._received += 1
            self._superseded += int(superseded_unprocessed)
            self._input_rate.tick(now)
            self._last_image_time = now

    def frame_processed(self) -> None:
        """Count one frame taken by the inference worker."""
        with self._lock:
            self._processed += 1

    def frame_timed(self, milliseconds: Mapping[str, float]) -> None:
        """Record the stage durations (ms, one per ``STAGES``) of one frame that went through all.

        A frame the gate keeps out (low confidence, a jump) goes through every stage too.

        Recorded together, under one lock, so that every stage's window holds the same frames
        (the stages add up to 'total') and ``timed`` counts them: frames rejected part-way
        count as processed but not as timed.
        """
        if set(milliseconds) != set(STAGES):
            raise ValueError(f'stage times for {sorted(milliseconds)}, expected {list(STAGES)}')
        with self._lock:
            self._timed += 1
            for stage, value in milliseconds.items():
                self._latency[stage].append(float(value))

    def rejected(self, reason: str, detail: str = '') -> None:
        """Count a frame that produced no pose, by reason; ``detail`` says why in words."""
        with self._lock:
            self._rejected[reason] += 1
            self._last_reject_reason = reason
            self._last_reject_detail = detail

    def scene_seen(self, scene: str, confidence: float,
                   probabilities: Optional[Dict[str, float]] = None) -> None:
        """Remember the latest classified scene, its probability and the most likely scenes."""
        top = sorted((probabilities or {scene: confidence}).items(), key=lambda kv: -kv[1])
        with self._lock:
            self._scene = scene
            self._scene_confidence = float(confidence)
            self._top_scenes = tuple((name, float(p)) for name, p in top[:TOP_SCENES])

    def fusion_window(self, size: int) -> None:
        """Remember how many frames the fusion window holds."""
        with self._lock:
            self._fusion_window = int(size)

    def amcl_seed(self, values: Tuple[Tuple[str, str], ...], warning: str = '') -> None:
        """Remember the AMCL seeding state: its key-values and a warning (gave up) or ''."""
        with self._lock:
            self._amcl_seed = tuple(values)
            self._amcl_seed_warning = warning

    def error_correlation(self, description: str) -> None:
        """Remember the error correlation models in use, in words."""
        with self._lock:
            self._error_correlation = description

    def camera(self, status: str, warning: bool, builds: int) -> None:
        """Remember how images are read, whether that is a fault, and reprojections built."""
        with self._lock:
            self._camera = status
            self._camera_warning = bool(warning)
            self._camera_builds = int(builds)

    def pose_update(self, published: bool, decision: str) -> None:
        """Count a ``~/pose_update`` sent (``published``) and remember the last decision."""
        with self._lock:
            self._pose_updates += int(published)
            self._last_pose_update = decision

    def pose_published(self, stamp_ns: Optional[int] = None) -> None:
        """Count one published pose (the node is localized) of the image stamped ``stamp_ns``."""
        now = self._clock()
        with self._lock:
            self._published += 1
            self._output_rate.tick(now)
            self._last_accept_time = now
            self._last_accepted_stamp_ns = stamp_ns

    def seconds_since_image(self) -> Optional[float]:
        """Monotonic seconds since the last image arrived, None if none ever did."""
        with self._lock:
            if self._last_image_time is None:
                return None
            return self._clock() - self._last_image_time

    def snapshot(self) -> StatsSnapshot:
        """Copy everything under the lock."""
        now = self._clock()
        with self._lock:
            latency = {}
            for stage, samples in self._latency.items():
                values = list(samples)
                latency[stage] = LatencySummary(
                    mean_ms=sum(values) / len(values) if values else 0.0,
                    max_ms=max(values) if values else 0.0, count=len(values))
            rejected = {reason: self._rejected.get(reason, 0) for reason in REJECT_REASONS}
            rejected.update(self._rejected)
            localized = (self._last_accept_time is not None
                         and now - self._last_accept_time <= LOCALIZED_TIMEOUT_S)
            return StatsSnapshot(
                received=self._received, processed=self._processed, timed=self._timed,
                published=self._published, superseded=self._superseded,
                input_rate_hz=self._input_rate.rate(now),
                output_rate_hz=self._output_rate.rate(now), latency=latency,
                rejected=rejected, scene=self._scene, scene_confidence=self._scene_confidence,
                localized=localized,
                last_image_age_s=(None if self._last_image_time is None
                                  else now - self._last_image_time),
                last_reject_reason=self._last_reject_reason,
                last_reject_detail=self._last_reject_detail, top_scenes=self._top_scenes,
                last_accepted_stamp_ns=self._last_accepted_stamp_ns,
                fusion_window=self._fusion_window, amcl_seed=self._amcl_seed,
                amcl_seed_warning=self._amcl_seed_warning,
                error_correlation=self._error_correlation, pose_updates=self._pose_updates,
                last_pose_update=self._last_pose_update, camera=self._camera,
                camera_warning=self._camera_warning, camera_builds=self._camera_builds)


def no_image_warning(info: NodeInfo, stats: StatsSnapshot, active_for_s: float
                     ) -> Optional[str]:
    """Return a warning when an active node has had no image for ``NO_IMAGE_WARN_S``."""
    age = stats.last_image_age_s
    if active_for_s <= NO_IMAGE_WARN_S or (age is not None and age <= NO_IMAGE_WARN_S):
        return None
    if age is None:
        return f'no image received on {info.input_topic} yet'
    return f'no image on {info.input_topic} for {age:.1f} s'


def localization_state(stats: StatsSnapshot, relocalizing: bool) -> str:
    """``relocalizing`` (a prior or request waits for agreeing frames), ``localized``, ``lost``."""
    if relocalizing:
        return RELOCALIZING
    return LOCALIZED if stats.localized else LOST


def status_level(info: NodeInfo, stats: StatsSnapshot) -> Tuple[bytes, str]:
    """Level and one-line message.

    OK when localized. WARN when inactive, without images, or not localized for a reason of the
    robot's whereabouts (outside the trained scenes, low confidence, a jump, a prior): an
    expected state, not a fault; WARN as well when localized but AMCL did not take our seed (the
    AMCL set-up is not doing its job). ERROR only when the set-up is broken
    (``FAULT_REASONS``: no camera extrinsic, inference failing).
    """
    if info.lifecycle_state != 'active':
        return DiagnosticStatus.WARN, f'{info.lifecycle_state}: not processing images'
    if stats.last_image_age_s is None or stats.last_image_age_s > NO_IMAGE_WARN_S:
        waited = ('never' if stats.last_image_age_s is None
                  else f'not for {stats.last_image_age_s:.1f} s')
        return DiagnosticStatus.WARN, f'no image received on {info.input_topic} ({waited})'
    if not stats.localized:
        why = f' (last rejection: {stats.last_reject_reason})' if stats.last_reject_reason else ''
        level = (DiagnosticStatus.ERROR if stats.last_reject_reason in FAULT_REASONS
                 else DiagnosticStatus.WARN)
        return level, 'not localized' + why
    if stats.amcl_seed_warning:
        return DiagnosticStatus.WARN, f'localized in {stats.scene}; {stats.amcl_seed_warning}'
    if stats.camera_warning:
        return DiagnosticStatus.WARN, f'localized in {stats.scene}; {stats.camera}'
    return DiagnosticStatus.OK, f'localized in {stats.scene}'


def build_status(info: NodeInfo, stats: StatsSnapshot, relocalizing: bool = False
                 ) -> DiagnosticStatus:
    """One ``DiagnosticStatus`` named ``<node>: localization`` with all key-values.

    Keys a robot reads: ``state`` (``localization_state``), ``top scenes`` (``name=p`` for the
    three most likely scenes of the last frame, comma separated), ``last accepted stamp``
    (seconds of the last published pose's image stamp, or ``never``), ``fusion window`` (frames
    the fused pose comes from; 0 with ``fusion: none``), ``last rejection``
    (why the last frame without a pose had none, frames named), ``error correlation`` (the
    ``fusion.error_correlation`` models; the scenes without a learned one), ``pose updates
    published`` and ``last pose update`` (the last frame's ``~/pose_update`` decision and why,
    e.g. no learned error correlation for its scene). With ``publish_initialpose``:
    ``amcl seed`` (``idle``, ``armed``, ``waiting``, ``took``, ``gave_up``, ``declined``,
    ``cancelled``, or ``sent`` without an ``amcl_pose_topic``), ``amcl seed attempts`` (sends of
    the last seed / most allowed), ``amcl seed last sent`` (node clock, s), ``amcl seed
    detail`` and ``amcl pose stddev`` (AMCL's latest).
    """
    level, message = status_level(info, stats)
    accepted = stats.last_accepted_stamp_ns
    values: List[Tuple[str, str]] = [
        ('state', localization_state(stats, relocalizing)),
        ('lifecycle state', info.lifecycle_state),
        ('localized', 'yes' if stats.localized else 'no'),
        ('top scenes', ', '.join(f'{name}={p:.3f}' for name, p in stats.top_scenes)),
        ('last accepted stamp', 'never' if accepted is None else f'{accepted * 1e-9:.9f}'),
        ('fusion window', str(stats.fusion_window)),
        ('error correlation', stats.error_correlation),
        ('pose updates published', str(stats.pose_updates)),
        ('last pose update', stats.last_pose_update),
        ('camera', stats.camera),
        ('camera reprojections built', str(stats.camera_builds)),
        ('last rejection', (f'{stats.last_reject_reason}: {stats.last_reject_detail}'
                            if stats.last_reject_reason else '')),
        ('input topic', info.input_topic),
        ('input rate (Hz)', f'{stats.input_rate_hz:.2f}'),
        ('output rate (Hz)', f'{stats.output_rate_hz:.2f}'),
        ('last image age (s)', ('never' if stats.last_image_age_s is None
                                else f'{stats.last_image_age_s:.3f}')),
        ('device', info.device),
        ('weights', info.weights),
        ('weights sha256', info.weights_sha256),
        ('scenes', ', '.join(info.scenes)),
        ('scene', stats.scene),
        ('scene confidence', f'{stats.scene_confidence:.3f}'),
        ('frames received', str(stats.received)),
        ('frames processed', str(stats.processed)),
        ('frames timed', str(stats.timed)),
        ('poses published', str(stats.published)),
        ('frames superseded', str(stats.superseded)),
    ]
    for stage in STAGES:
        summary = stats.latency[stage]
        values.append((f'{stage} latency mean (ms)', f'{summary.mean_ms:.2f}'))
        values.append((f'{stage} latency max (ms)', f'{summary.max_ms:.2f}'))
    values.extend((f'rejected {reason}', str(count)) for reason, count in stats.rejected.items())
    values.extend(stats.amcl_seed)
    values.extend(info.extra.items())
    return DiagnosticStatus(
        level=level, name=f'{info.node_name}: localization', message=message,
        hardware_id=info.device, values=[KeyValue(key=k, value=v) for k, v in values])
