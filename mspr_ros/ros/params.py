"""Parameters of the ``mspr_localizer`` node: declaration, descriptors and validation.

Every parameter is declared once, with a ``ParameterDescriptor`` that carries its description,
range and read-only flag, so ``ros2 param describe`` documents the node and rcl enforces ranges.
Frame names and gating knobs use AMCL's spelling so an AMCL YAML block can be swapped in.

``NodeParams.from_values`` validates the combination (frame names, enumerations, array lengths)
and reports *all* problems in one ``ParameterValidationError``; the node calls it at configure
and for every runtime ``set_parameters`` request.
"""
from dataclasses import dataclass
import math
from typing import Any, Dict, List, Mapping, Optional, Sequence, Set, Tuple

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rcl_interfaces.msg import ParameterType
from rclpy.node import Node
from rclpy.parameter import Parameter

IMAGE_TRANSPORTS = ('raw', 'compressed')
IMAGE_QOS_PROFILES = ('sensor_data', 'reliable', 'system_default')
COVARIANCE_MODES = ('calibrated', 'fixed')
# Optical frame (z forward, x right, y down) at the base origin, looking along base +x.
DEFAULT_CAMERA_TO_BASE = (0.0, 0.0, 0.0, -math.pi / 2, 0.0, -math.pi / 2)
SCENE_PARAM_PREFIX = 'scenes.'
SCENE_PARAM_SUFFIX = '.map_from_scene'


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
class ParamSpec:
    """Declaration of one parameter: default value, type, description and limits."""

    name: str
    default: Any
    type: int
    description: str
    read_only: bool = False
    float_range: Optional[Tuple[float, float]] = None
    int_range: Optional[Tuple[int, int]] = None
    constraints: str = ''

    def descriptor(self) -> ParameterDescriptor:
        """Build the rcl descriptor; ranges are inclusive, step 0 means continuous."""
        descriptor = ParameterDescriptor(
            name=self.name, type=self.type, description=self.description,
            read_only=self.read_only, additional_constraints=self.constraints)
        if self.float_range is not None:
            descriptor.floating_point_range = [FloatingPointRange(
                from_value=self.float_range[0], to_value=self.float_range[1], step=0.0)]
        if self.int_range is not None:
            descriptor.integer_range = [IntegerRange(
                from_value=self.int_range[0], to_value=self.int_range[1], step=0)]
        return descriptor


_S = ParameterType.PARAMETER_STRING
_D = ParameterType.PARAMETER_DOUBLE
_B = ParameterType.PARAMETER_BOOL
_I = ParameterType.PARAMETER_INTEGER
_DA = ParameterType.PARAMETER_DOUBLE_ARRAY
_SA = ParameterType.PARAMETER_STRING_ARRAY

PARAM_SPECS: Tuple[ParamSpec, ...] = (
    ParamSpec('weights', '', _S, 'Path to the .safetensors weights bundle (mspr-export output).',
              read_only=True),
    ParamSpec('device', 'auto', _S, 'Inference device: auto, cpu, cuda or cuda:N.',
              read_only=True, constraints='auto|cpu|cuda|cuda:N; auto falls back to cpu'),
    ParamSpec('fp16', False, _B, 'Run inference in half precision (CUDA only).', read_only=True),
    ParamSpec('cpu_threads', 0, _I,
              "PyTorch intra-op threads of this process; 0 keeps PyTorch's default (one per "
              'core). Fewer leave cores to the camera driver and the rest of the robot.',
              read_only=True, int_range=(0, 1024)),
    ParamSpec('image_transport', 'raw', _S,
              "Image input: 'raw' subscribes to image, 'compressed' to image/compressed.",
              read_only=True, constraints='|'.join(IMAGE_TRANSPORTS)),
    ParamSpec('image_qos', 'sensor_data', _S,
              'QoS of the image subscription (sensor_data matches reliable and best-effort '
              'publishers).', read_only=True, constraints='|'.join(IMAGE_QOS_PROFILES)),
    ParamSpec('max_image_age', 1.0, _D,
              'Drop frames older than this at processing time (s, node clock); 0 disables.',
              float_range=(0.0, 3600.0)),
    ParamSpec('max_rate', 0.0, _D, 'Maximum inference rate (Hz); 0 means unlimited.',
              float_range=(0.0, 1000.0)),
    ParamSpec('global_frame_id', 'map', _S, 'Map frame: parent of the published TF and of '
              'the scene frames.'),
    ParamSpec('odom_frame_id', 'odom', _S,
              "Odometry frame; map -> odom is published. Empty: publish map -> base directly "
              "(robots without odometry only)."),
    ParamSpec('base_frame_id', 'base_link', _S,
              'Robot base frame (AMCL defaults to base_footprint).'),
    ParamSpec('camera_frame_id', '', _S,
              'Camera optical frame used only when an image arrives with an empty frame_id.'),
    ParamSpec('tf_broadcast', True, _B, 'Publish the map -> odom transform on /tf.'),
    ParamSpec('transform_tolerance', 0.5, _D,
              'Future-date the published TF by this much (s). AMCL uses 1.0, rtabmap 0.1.',
              float_range=(0.0, 60.0)),
    ParamSpec('transform_publish_period', 0.05, _D,
              'Re-broadcast period of the last map -> odom (s); 0 disables re-broadcast. '
              'Applied at configure.', float_range=(0.0, 10.0)),
    ParamSpec('transform_timeout', 0.1, _D,
              'How long to wait for odom -> base at the image stamp (s).',
              float_range=(0.0, 10.0)),
    ParamSpec('two_d_mode', False, _B,
              'Flatten the published pose and map -> odom to x, y, yaw (ground robots).'),
    ParamSpec('camera_to_base', list(DEFAULT_CAMERA_TO_BASE), _DA,
              'Camera optical frame in the base frame [x, y, z, roll, pitch, yaw] (m, rad); '
              'used only when TF has no base <- camera transform.'),
    ParamSpec('use_odom_topic', False, _B,
              'Take odom -> base from the odom topic (nav_msgs/Odometry) instead of TF.',
              read_only=True),
    ParamSpec('min_scene_confidence', 0.5, _D,
              'Minimum scene-classification probability for a frame to be used.',
              float_range=(0.0, 1.0)),
    ParamSpec('max_jump_translation', 0.0, _D,
              'Reject poses farther than this from the odom-predicted pose (m); 0 disables.',
              float_range=(0.0, 1.0e6)),
    ParamSpec('max_jump_rotation', 0.0, _D,
              'Reject poses rotated more than this from the odom-predicted pose (deg); '
              '0 disables.', float_range=(0.0, 180.0)),
    ParamSpec('allowed_scenes', [], _SA,
              'Scenes the node may report; empty allows every scene of the bundle.'),
    ParamSpec('covariance.mode', 'calibrated', _S,
              "'calibrated': the bundle's per-scene covariance; 'fixed': the stddevs below.",
              constraints='|'.join(COVARIANCE_MODES)),
    ParamSpec('covariance.position_stddev', 0.5, _D,
              'Position standard deviation in fixed mode (m).', float_range=(1.0e-6, 1.0e3)),
    ParamSpec('covariance.orientation_stddev', 0.1, _D,
              'Orientation standard deviation in fixed mode (rad).',
              float_range=(1.0e-6, 10.0)),
    ParamSpec('covariance.confidence_inflation', 1.0, _D,
              'How strongly low scene confidence inflates the covariance (0: not at all).',
              float_range=(0.0, 1.0e3)),
    ParamSpec('publish_initialpose', False, _B,
              'Publish initialpose (to seed AMCL) once after each accepted relocalization.'),
    ParamSpec('autostart', True, _B, 'Configure and activate at start-up (plain ros2 run).',
              read_only=True),
    ParamSpec('max_image_pixels', 4096 * 4096, _I,
              'Refuse images with more pixels than this before converting them.',
              int_range=(1, 2 ** 31 - 1)),
    ParamSpec('diagnostics_period', 1.0, _D, 'Period of /diagnostics (s). Applied at configure.',
              float_range=(0.1, 60.0)),
)
PARAM_NAMES = tuple(spec.name for spec in PARAM_SPECS)


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
    fp16: bool
    cpu_threads: int
    image_transport: str
    image_qos: str
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
    camera_to_base: Tuple[float, ...]
    use_odom_topic: bool
    min_scene_confidence: float
    max_jump_translation: float
    max_jump_rotation: float
    allowed_scenes: Tuple[str, ...]
    covariance: CovarianceParams
    publish_initialpose: bool
    autostart: bool
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
                              ('covariance.mode', COVARIANCE_MODES)):
            if values[name] not in choices:
                problems.append(_problem(
                    name, f"{name} '{values[name]}' is not one of {', '.join(choices)}"))
        camera_to_base = tuple(float(v) for v in values['camera_to_base'] or ())
        if len(camera_to_base) != 6 or not all(math.isfinite(v) for v in camera_to_base):
            problems.append(_problem(
                'camera_to_base', 'camera_to_base must be 6 finite numbers [x, y, z, roll, '
                f'pitch, yaw], got {list(camera_to_base)}'))
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
            fp16=bool(values['fp16']), cpu_threads=int(values['cpu_threads']),
            image_transport=values['image_transport'],
            image_qos=values['image_qos'], max_image_age=float(values['max_image_age']),
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
            covariance=CovarianceParams(
                mode=values['covariance.mode'],
                position_stddev=float(values['covariance.position_stddev']),
                orientation_stddev=float(values['covariance.orientation_stddev']),
                confidence_inflation=float(values['covariance.confidence_inflation'])),
            publish_initialpose=bool(values['publish_initialpose']),
            autostart=bool(values['autostart']),
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
        if spec.type == _SA:
            # rclpy cannot infer a type from [] (and YAML '[]' arrives untyped), so declare
            # statically typed and give it a typed empty value.
            param = node.declare_parameter(spec.name, Parameter.Type.STRING_ARRAY,
                                           spec.descriptor())
            if param.value is None:
                node.set_parameters([Parameter(spec.name, Parameter.Type.STRING_ARRAY,
                                               list(spec.default))])
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
    return f'{SCENE_PARAM_PREFIX}{scene}{SCENE_PARAM_SUFFIX}'


def scene_alignment_descriptor(scene: str) -> ParameterDescriptor:
    """Descriptor of a per-scene ``map <- scene`` alignment override (declared at configure)."""
    return ParameterDescriptor(
        name=scene_param_name(scene), type=_DA, read_only=False,
        description=f"Alignment map <- '{scene}' [x, y, z, qx, qy, qz, qw, scale]; defaults to "
                    'the bundle value. Applied at configure.')


def parse_scene_alignment(scene: str, value: Optional[Sequence[float]]) -> Dict[str, Any]:
    """Turn ``[x, y, z, qx, qy, qz, qw, scale]`` into a SceneAlignment dict.

    Raises ``ParameterValidationError`` naming the parameter on a wrong length, a non-finite
    number, a zero quaternion or a non-positive scale.
    """
    name = scene_param_name(scene)
    values = [float(v) for v in (value or ())]
    if len(values) != 8 or not all(math.isfinite(v) for v in values):
        raise ParameterValidationError([_problem(
            name, f'{name} must be 8 finite numbers [x, y, z, qx, qy, qz, qw, scale], got '
            f'{values}')])
    quat_norm = math.sqrt(sum(v * v for v in values[3:7]))
    if quat_norm < 1e-9 or values[7] <= 0.0:
        raise ParameterValidationError([_problem(
            name, f'{name}: quaternion must be non-zero and scale positive, got {values}')])
    return {'translation': values[0:3], 'rotation_xyzw': [v / quat_norm for v in values[3:7]],
            'scale': values[7]}


def alignment_to_param(alignment: Mapping[str, Any]) -> List[float]:
    """Inverse of ``parse_scene_alignment``: the 8-number parameter value of a bundle entry."""
    return ([float(v) for v in alignment['translation']]
            + [float(v) for v in alignment['rotation_xyzw']] + [float(alignment['scale'])])
