"""Parameters of the ``mspr_localizer`` node: declaration, reading and validation.

Every parameter is declared once from its ``ParamSpec`` (``mspr_ros.ros.param_specs``), whose
descriptor carries its description, range and read-only flag, so ``ros2 param describe``
documents the node and rcl enforces ranges. Frame names and gating knobs use AMCL's spelling so
an AMCL YAML block can be swapped in.

``NodeParams.from_values`` validates the combination (frame names, enumerations, array lengths)
and reports *all* problems in one ``ParameterValidationError``; the node calls it at configure
and for every runtime ``set_parameters`` request.
"""
from dataclasses import dataclass
import math
from typing import Any, Dict, List, Mapping, Optional, Sequence, Set, Tuple

from rcl_interfaces.msg import ParameterDescriptor, ParameterType
from rclpy.node import Node
from rclpy.parameter import Parameter

from mspr_ros.estimation.amcl_seed import AmclSeedPolicy
from mspr_ros.estimation.error_correlation import ErrorCorrelation, mode_default
from mspr_ros.estimation.error_correlation import resolve_error_correlation
from mspr_ros.estimation.frame_processor import CovarianceSettings, ProcessorSettings
from mspr_ros.estimation.fusion import FusionConfig
from mspr_ros.estimation.gating import GateConfig
from mspr_ros.geometry.transforms import alignment_parameter_name, alignment_parameter_scene
from mspr_ros.geometry.transforms import SceneAlignment
from mspr_ros.precision import PRECISIONS
from mspr_ros.ros.param_specs import CAMERA_MODES, COVARIANCE_MODES, ERROR_CORRELATION_MODES
from mspr_ros.ros.param_specs import FUSION_MODES, IMAGE_QOS_PROFILES
from mspr_ros.ros.param_specs import IMAGE_TRANSPORTS, PARAM_NAMES, PARAM_SPECS, TF_BACKENDS

_ARRAY_TYPES = {ParameterType.PARAMETER_STRING_ARRAY: Parameter.Type.STRING_ARRAY,
                ParameterType.PARAMETER_DOUBLE_ARRAY: Parameter.Type.DOUBLE_ARRAY}


@dataclass(frozen=True)
class ParameterProblem:
    """One validation problem: the parameters involved and a sentence explaining it."""

    names: Tuple[str, ...]
    text: str


class ParameterValidationError(ValueError):
    """Invalid parameter values; ``problems`` holds one ``ParameterProblem`` per issue."""

    def __init__(self, problems: Sequence[ParameterProblem]):
        """Keep ``problems``; the message joins their texts."""
        self.problems = list(problems)
        super().__init__('invalid parameters: ' + '; '.join(p.text for p in self.problems))

    def involving(self, names: Set[str]) -> List[ParameterProblem]:
        """Return the problems that involve any of ``names``."""
        return [p for p in self.problems if names.intersection(p.names)]


@dataclass(frozen=True)
class CovarianceParams:
    """How the published covariance is formed (``mspr_ros.geometry.covariance``)."""

    mode: str
    position_stddev: float
    orientation_stddev: float
    confidence_inflation: float


@dataclass(frozen=True)
class NodeParams:
    """Validated snapshot of the node's parameters."""

    weights: str
    device: str
    precision: str  # what to run: the deprecated ``fp16: true`` turns 'fp32' into 'fp16'
    cuda_graphs: bool
    torch_compile: bool
    fp16: bool  # deprecated; as set, for the warning
    cpu_threads: int
    image_transport: str
    image_qos: str
    camera_model: str
    camera_info_topic: str
    camera_info_timeout: float
    max_image_age: float
    max_rate: float
    global_frame_id: str
    odom_frame_id: str
    base_frame_id: str
    camera_frame_id: str
    tf_broadcast: bool
    transform_tolerance: float
    transform_publish_period: float
    transform_timeout: float
    two_d_mode: bool
    camera_to_base: Tuple[float, ...]  # empty: not set
    use_odom_topic: bool
    min_scene_confidence: float
    max_jump_translation: float
    max_jump_rotation: float
    allowed_scenes: Tuple[str, ...]
    set_initial_pose: bool
    initial_pose: Tuple[float, float, float, float]  # x, y, z, yaw
    initial_pose_gate: float
    relocalization_agreement_frames: int
    covariance: CovarianceParams
    fusion: str
    fusion_window_s: float
    fusion_window_distance_m: float
    fusion_odometry_drift_per_m: float
    fusion_odometry_rotation_drift_per_m: float
    fusion_error_correlation: str
    fusion_error_correlation_s: float
    pose_update_max_correlation: float
    publish_initialpose: bool
    amcl_pose_topic: str
    seed_amcl: AmclSeedPolicy
    autostart: bool
    bond_heartbeat_period: float
    tf_backend: str
    max_image_pixels: int
    diagnostics_period: float

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> 'NodeParams':
        """Validate a name -> value mapping holding every name of ``PARAM_NAMES``.

        Raises ``ParameterValidationError`` listing every problem found.
        """
        problems = _frame_problems(values)
        for name, choices in (('image_transport', IMAGE_TRANSPORTS),
                              ('image_qos', IMAGE_QOS_PROFILES),
                              ('camera_model', CAMERA_MODES),
                              ('covariance.mode', COVARIANCE_MODES),
                              ('fusion', FUSION_MODES),
                              ('fusion.error_correlation', ERROR_CORRELATION_MODES),
                              ('precision', PRECISIONS),
                              ('tf_backend', TF_BACKENDS)):
            if values[name] not in choices:
                problems.append(_problem(
                    name, f"{name} '{values[name]}' is not one of {', '.join(choices)}"))
        precision = values['precision']
        if values['fp16'] and precision == 'fp32':
            precision = 'fp16'
        elif values['fp16'] and precision == 'bf16':
            problems.append(_problem(('fp16', 'precision'), (
                f"fp16 (deprecated) is true but precision is '{precision}': set fp16 false")))
        camera_to_base = tuple(float(v) for v in values['camera_to_base'] or ())
        if camera_to_base and (len(camera_to_base) != 6
                               or not all(math.isfinite(v) for v in camera_to_base)):
            problems.append(_problem(
                'camera_to_base', 'camera_to_base must be empty (not set) or 6 finite numbers '
                f'[x, y, z, roll, pitch, yaw], got {list(camera_to_base)}'))
        initial_pose = tuple(float(values[f'initial_pose.{axis}']) for axis in 'x y z yaw'.split())
        if not all(math.isfinite(v) for v in initial_pose):
            problems.append(_problem(
                tuple(f'initial_pose.{axis}' for axis in 'x y z yaw'.split()),
                f'initial_pose must be finite, got {list(initial_pose)}'))
        if values['fusion.error_correlation'] == 'time' and not (
                float(values['fusion.error_correlation_s']) > 0.0):
            problems.append(_problem(
                ('fusion.error_correlation', 'fusion.error_correlation_s'),
                "fusion.error_correlation 'time' needs fusion.error_correlation_s > 0, got "
                f"{values['fusion.error_correlation_s']}"))
        if not str(values['weights']).strip():
            problems.append(_problem(
                'weights', 'weights is empty: set it to the path of a .safetensors bundle'))
        if not str(values['device']).strip():
            problems.append(_problem('device', 'device is empty: use auto, cpu, cuda or cuda:N'))
        allowed = tuple(values['allowed_scenes'] or ())
        if any(not name.strip() for name in allowed):
            problems.append(_problem(
                'allowed_scenes', f'allowed_scenes contains an empty name: {list(allowed)}'))
        if problems:
            raise ParameterValidationError(problems)
        return cls(
            weights=str(values['weights']), device=str(values['device']),
            precision=precision, cuda_graphs=bool(values['cuda_graphs']),
            torch_compile=bool(values['torch_compile']),
            fp16=bool(values['fp16']), cpu_threads=int(values['cpu_threads']),
            image_transport=values['image_transport'],
            image_qos=values['image_qos'], camera_model=values['camera_model'],
            camera_info_topic=str(values['camera_info_topic']),
            camera_info_timeout=float(values['camera_info_timeout']),
            max_image_age=float(values['max_image_age']),
            max_rate=float(values['max_rate']), global_frame_id=values['global_frame_id'],
            odom_frame_id=values['odom_frame_id'], base_frame_id=values['base_frame_id'],
            camera_frame_id=values['camera_frame_id'], tf_broadcast=bool(values['tf_broadcast']),
            transform_tolerance=float(values['transform_tolerance']),
            transform_publish_period=float(values['transform_publish_period']),
            transform_timeout=float(values['transform_timeout']),
            two_d_mode=bool(values['two_d_mode']), camera_to_base=camera_to_base,
            use_odom_topic=bool(values['use_odom_topic']),
            min_scene_confidence=float(values['min_scene_confidence']),
            max_jump_translation=float(values['max_jump_translation']),
            max_jump_rotation=float(values['max_jump_rotation']),
            allowed_scenes=allowed,
            set_initial_pose=bool(values['set_initial_pose']), initial_pose=initial_pose,
            initial_pose_gate=float(values['initial_pose_gate']),
            relocalization_agreement_frames=int(values['relocalization_agreement_frames']),
            covariance=CovarianceParams(
                mode=values['covariance.mode'],
                position_stddev=float(values['covariance.position_stddev']),
                orientation_stddev=float(values['covariance.orientation_stddev']),
                confidence_inflation=float(values['covariance.confidence_inflation'])),
            fusion=values['fusion'], fusion_window_s=float(values['fusion.window_s']),
            fusion_window_distance_m=float(values['fusion.window_distance_m']),
            fusion_odometry_drift_per_m=float(values['fusion.odometry_drift_per_m']),
            fusion_odometry_rotation_drift_per_m=float(
                values['fusion.odometry_rotation_drift_per_m']),
            fusion_error_correlation=str(values['fusion.error_correlation']),
            fusion_error_correlation_s=float(values['fusion.error_correlation_s']),
            pose_update_max_correlation=float(values['pose_update.max_correlation']),
            publish_initialpose=bool(values['publish_initialpose']),
            amcl_pose_topic=str(values['amcl_pose_topic']),
            seed_amcl=AmclSeedPolicy(
                position_stddev_m=float(values['seed_amcl_position_stddev']),
                yaw_stddev_rad=float(values['seed_amcl_yaw_stddev']),
                min_interval_s=float(values['seed_amcl_min_interval']),
                retry_period_s=float(values['seed_amcl_retry_period']),
                max_attempts=int(values['seed_amcl_max_attempts'])),
            autostart=bool(values['autostart']),
            bond_heartbeat_period=float(values['bond_heartbeat_period']),
            tf_backend=str(values['tf_backend']),
            max_image_pixels=int(values['max_image_pixels']),
            diagnostics_period=float(values['diagnostics_period']))


def _problem(names, text: str) -> ParameterProblem:
    return ParameterProblem((names,) if isinstance(names, str) else tuple(names), text)


def _frame_problems(values: Mapping[str, Any]) -> List[ParameterProblem]:
    """Frame names must be valid tf2 ids and the map/odom/base chain must be distinct."""
    problems = []
    required = ('global_frame_id', 'base_frame_id')
    for name in ('global_frame_id', 'odom_frame_id', 'base_frame_id', 'camera_frame_id'):
        frame = values[name]
        if name in required and not frame:
            problems.append(_problem(name, f'{name} is empty'))
        elif frame.startswith('/') or any(c.isspace() for c in frame):
            problems.append(_problem(name, f"{name} '{frame}' is not a valid tf2 frame id "
                                     "(no leading '/', no whitespace)"))
    chain = [(n, values[n]) for n in ('global_frame_id', 'odom_frame_id', 'base_frame_id')
             if values[n]]
    for i, (name_a, frame_a) in enumerate(chain):
        for name_b, frame_b in chain[i + 1:]:
            if frame_a == frame_b:
                problems.append(_problem(
                    (name_a, name_b), f"{name_a} and {name_b} are both '{frame_a}': they must "
                    'differ'))
    return problems


def declare_node_parameters(node: Node) -> None:
    """Declare every parameter of ``PARAM_SPECS`` on ``node`` (once, at construction)."""
    for spec in PARAM_SPECS:
        if spec.type in _ARRAY_TYPES and not spec.default:
            # rclpy cannot infer a type from [] (and YAML '[]' arrives untyped), so declare
            # statically typed and give it a typed empty value.
            param_type = _ARRAY_TYPES[spec.type]
            param = node.declare_parameter(spec.name, param_type, spec.descriptor())
            if param.value is None:
                node.set_parameters([Parameter(spec.name, param_type, [])])
        else:
            node.declare_parameter(spec.name, spec.default, spec.descriptor())


def read_node_parameters(node: Node,
                         overrides: Sequence[Parameter] = ()) -> NodeParams:
    """Read and validate the node's parameters, with ``overrides`` replacing current values."""
    values: Dict[str, Any] = {name: node.get_parameter(name).value for name in PARAM_NAMES}
    for param in overrides:
        if param.name in values:
            values[param.name] = param.value
    return NodeParams.from_values(values)


def scene_param_name(scene: str) -> str:
    """Name of the per-scene alignment override, e.g. ``scenes.atrium.map_from_scene``."""
    return alignment_parameter_name(scene)


def scene_alignment_descriptor(scene: str) -> ParameterDescriptor:
    """Descriptor of a per-scene ``map <- scene`` alignment override (declared at configure)."""
    return ParameterDescriptor(
        name=scene_param_name(scene), type=ParameterType.PARAMETER_DOUBLE_ARRAY, read_only=False,
        description=f"Alignment map <- '{scene}' [x, y, z, qx, qy, qz, qw, scale]; defaults to "
                    'the bundle value. Applied at configure.')


def parse_scene_alignment(scene: str, value: Optional[Sequence[float]]) -> Dict[str, Any]:
    """Turn ``[x, y, z, qx, qy, qz, qw, scale]`` into a SceneAlignment dict.

    The parsing is the core's (``SceneAlignment.from_parameter``), shared with the bag tools.
    Raises ``ParameterValidationError`` naming the parameter on a wrong length, a non-finite
    number, a zero quaternion or a non-positive scale.
    """
    name = scene_param_name(scene)
    try:
        return SceneAlignment.from_parameter(value).to_dict()
    except ValueError as error:
        raise ParameterValidationError([_problem(name, f'{name} {error}')]) from None


def alignment_to_param(alignment: Mapping[str, Any]) -> List[float]:
    """Inverse of ``parse_scene_alignment``: the 8-number parameter value of a bundle entry."""
    return SceneAlignment.from_dict(alignment).to_parameter()


def processor_settings(params: NodeParams) -> ProcessorSettings:
    """Return the ROS-free per-frame settings of ``params`` (0 jump limits: unlimited)."""
    cov = params.covariance
    return ProcessorSettings(
        gate=GateConfig(
            min_scene_confidence=params.min_scene_confidence,
            max_jump_translation=params.max_jump_translation or math.inf,
            max_jump_rotation_deg=params.max_jump_rotation or math.inf,
            allowed_scenes=frozenset(params.allowed_scenes)),
        two_d_mode=params.two_d_mode,
        covariance=CovarianceSettings(cov.mode, cov.position_stddev, cov.orientation_stddev,
                                      cov.confidence_inflation),
        initial_pose_gate=params.initial_pose_gate,
        agreement_frames=params.relocalization_agreement_frames)


@dataclass(frozen=True)
class ErrorCorrelations:
    """The error correlation models ``fusion.error_correlation`` resolves to.

    Attributes:
        models: scene -> model, every scene of the bundle.
        default: the model of a scene not in ``models``.
        fallback: the scenes of mode 'bundle' without a learned model (``one_frame``).
    """

    models: Dict[str, ErrorCorrelation]
    default: ErrorCorrelation
    fallback: Tuple[str, ...] = ()

    def describe(self, params: 'NodeParams') -> str:
        """Return the mode and its fallback in words (logs and /diagnostics)."""
        mode = params.fusion_error_correlation
        if mode == 'time':
            return f'time ({params.fusion_error_correlation_s:g} s)'
        if mode == 'independent':
            return 'independent (every frame a new measurement: over-confident)'
        apart = [scene for scene, model in self.models.items() if model.per_block]
        blocks = f"; position and rotation apart: {', '.join(apart)}" if apart else ''
        if not self.fallback:
            return f'bundle (learned for every scene{blocks})'
        return (f"bundle (no learned model, one frame's worth: {', '.join(self.fallback)}"
                f'{blocks})')


def error_correlations(params: NodeParams, learned: Mapping[str, ErrorCorrelation],
                       scenes: Sequence[str]) -> ErrorCorrelations:
    """Return the models of ``fusion.error_correlation`` for a bundle's scenes.

    ``learned`` is the bundle's ``error_correlation`` (empty for older bundles). A scene the
    bundle does not name gets the mode's model ('bundle': ``one_frame``), as the offline bag
    replay (``mspr_training.bags.fusion_replay``) does.
    """
    mode, time_s = params.fusion_error_correlation, params.fusion_error_correlation_s
    models, fallback = resolve_error_correlation(mode, time_s, learned, scenes)
    return ErrorCorrelations(models, mode_default(mode, time_s), tuple(fallback))


def fusion_config(params: NodeParams, correlations: ErrorCorrelations) -> Optional[FusionConfig]:
    """Return the fusion's configuration, None with ``fusion: none``."""
    if params.fusion == 'none':
        return None
    return FusionConfig(window_s=params.fusion_window_s,
                        window_distance_m=params.fusion_window_distance_m,
                        odometry_drift_per_m=params.fusion_odometry_drift_per_m,
                        odometry_rotation_drift_per_m=params.fusion_odometry_rotation_drift_per_m,
                        error_correlation=correlations.models,
                        default_correlation=correlations.default,
                        two_d=params.two_d_mode)


def change_problem(node: Node, parameters: Sequence[Parameter]) -> Optional[str]:
    """Return why a runtime ``set_parameters`` must be refused, None when it may proceed.

    A per-scene alignment must parse; the node's parameters with the change applied must
    validate as a whole (only problems involving a changed name count, so a change is not
    refused for an unrelated parameter that is already invalid).
    """
    changed = {p.name for p in parameters}
    for param in parameters:
        scene = alignment_parameter_scene(param.name)
        if scene is not None:
            try:
                parse_scene_alignment(scene, param.value)
            except ParameterValidationError as error:
                return str(error)
    if not changed & set(PARAM_NAMES):
        return None
    try:
        read_node_parameters(node, parameters)
    except ParameterValidationError as error:
        relevant = error.involving(changed)
        if relevant:
            return '; '.join(p.text for p in relevant)
    return None
