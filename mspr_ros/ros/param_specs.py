"""Declarations of the ``mspr_localizer`` node's parameters: one ``ParamSpec`` each.

Each spec carries its default, type, description, range and read-only flag, so
``ros2 param describe`` documents the node and rcl enforces the ranges; ``config/mspr_ros.yaml``
lists the same names and defaults (a test checks it). Validation and reading live in
``mspr_ros.ros.params``.
"""
from dataclasses import dataclass
from typing import Any, Optional, Tuple

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rcl_interfaces.msg import ParameterType

from mspr_ros.camera.selection import CAMERA_MODES
from mspr_ros.estimation.error_correlation import MODES as ERROR_CORRELATION_MODES
from mspr_ros.precision import PRECISIONS

IMAGE_TRANSPORTS = ('raw', 'compressed')
IMAGE_QOS_PROFILES = ('sensor_data', 'reliable', 'system_default')
COVARIANCE_MODES = ('calibrated', 'fixed')
FUSION_MODES = ('window', 'none')
TF_BACKENDS = ('auto', 'tf2_ros', 'mspr_ros')


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
    ParamSpec('precision', 'fp32', _S,
              'Inference precision: fp32; fp16 (torch on CUDA); bf16 (torch on the CPU or a GPU '
              'with bfloat16). Elsewhere fp32 runs, with a warning.',
              read_only=True, constraints='|'.join(PRECISIONS)),
    ParamSpec('cuda_graphs', False, _B,
              'Replay each image\'s inference from a captured CUDA graph (torch on CUDA; '
              'elsewhere ignored with a warning).', read_only=True),
    ParamSpec('torch_compile', False, _B,
              'Compile the torch model with torch.compile at configure (0.56-0.80 of the model '
              'as built on 2 CPU cores, where the eager path takes 0.77-0.90; a compile of about '
              'a minute, cached on disk; needs a C++ compiler, or Triton on CUDA). A failed '
              'compile fails configure. Not with cuda_graphs.', read_only=True),
    ParamSpec('fp16', False, _B,
              "Deprecated, use precision: fp16. True with precision 'fp32' runs fp16.",
              read_only=True),
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
    ParamSpec('camera_model', 'auto', _S,
              "How each image's camera is read from camera_info: auto (reproject into the "
              "training camera once camera_info arrives; resize and crop before), require (no "
              "frame without camera_info covering the training view) or ignore (resize and "
              "crop).", read_only=True, constraints='|'.join(CAMERA_MODES)),
    ParamSpec('camera_info_topic', '', _S,
              'sensor_msgs/CameraInfo topic; empty: camera_info beside the image topic (the '
              'image_transport convention).', read_only=True),
    ParamSpec('camera_info_timeout', 0.2, _D,
              "How long an image waits for its camera_info when one is expected (a publisher "
              "on the topic, camera_model require, or a driver that stamps camera_info like its "
              "images) before it is read with the latest earlier one (s); 0 never waits.",
              float_range=(0.0, 10.0)),
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
    ParamSpec('tf_backend', 'auto', _S,
              'TF implementation: auto (tf2_ros where it is installed, else mspr_ros), tf2_ros '
              '(configure fails without it) or mspr_ros (the package\'s own /tf publisher and '
              'listener, for installs without tf2_ros).', read_only=True,
              constraints='auto|tf2_ros|mspr_ros'),
    ParamSpec('transform_tolerance', 0.5, _D,
              'Future-date the published TF by this much (s). AMCL uses 1.0, rtabmap 0.1.',
              float_range=(0.0, 60.0)),
    ParamSpec('transform_publish_period', 0.05, _D,
              'Re-broadcast period of the last map -> odom (s); 0 disables re-broadcast. '
              'Applied at configure.', float_range=(0.0, 10.0)),
    ParamSpec('transform_timeout', 0.1, _D,
              'How long to wait for odom -> base and base <- camera at the image stamp (s).',
              float_range=(0.0, 10.0)),
    ParamSpec('two_d_mode', False, _B,
              'Flatten the published pose and map -> odom to x, y, yaw (ground robots).'),
    ParamSpec('camera_to_base', [], _DA,
              'Camera optical frame in the base frame [x, y, z, roll, pitch, yaw] (m, rad), '
              'used only when set and TF has no base <- camera transform. Empty (default): '
              'frames without that transform give no pose.'),
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
    ParamSpec('set_initial_pose', False, _B,
              "Use initial_pose.{x, y, z, yaw} as an initial pose at activation (AMCL's "
              'spelling); it holds like one from the initialpose topic.'),
    ParamSpec('initial_pose.x', 0.0, _D, 'Initial pose x in the global frame (m).'),
    ParamSpec('initial_pose.y', 0.0, _D, 'Initial pose y in the global frame (m).'),
    ParamSpec('initial_pose.z', 0.0, _D, 'Initial pose z in the global frame (m).'),
    ParamSpec('initial_pose.yaw', 0.0, _D, 'Initial pose yaw in the global frame (rad).'),
    ParamSpec('initial_pose_gate', 3.0, _D,
              'Frames farther than this Mahalanobis distance from an initial pose (its '
              'covariance plus the frame\'s) are rejected.', float_range=(0.1, 1.0e3)),
    ParamSpec('relocalization_agreement_frames', 3, _I,
              'An initial pose is overruled when this many consecutive frames agree on '
              'another place.', int_range=(1, 1000)),
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
    ParamSpec('fusion', 'window', _S,
              "'window': ~/pose and map -> odom from the odometry-aided fusion of the recent "
              "frames; 'none': each frame's own estimate. ~/pose_raw is always the frame's.",
              constraints='|'.join(FUSION_MODES)),
    ParamSpec('fusion.window_s', 10.0, _D,
              'Frames older than this (s) leave the fusion window.', float_range=(0.01, 3600.0)),
    ParamSpec('fusion.window_distance_m', 15.0, _D,
              'Frames taken more than this odometry distance ago (m) leave the fusion window '
              '(bounds the lever arm and odometry drift carried).', float_range=(0.01, 1.0e4)),
    ParamSpec('fusion.odometry_drift_per_m', 0.02, _D,
              "Odometry's relative position drift: a frame s metres of travel ago gets "
              '(drift * s)^2 added to its position variances (m^2).',
              float_range=(0.0, 1.0)),
    ParamSpec('fusion.odometry_rotation_drift_per_m', 0.01, _D,
              "Odometry's orientation drift per metre travelled (rad/m): a frame s metres of "
              'travel ago gets (drift * s)^2 added to its orientation variances (rad^2).',
              float_range=(0.0, 1.0)),
    ParamSpec('fusion.error_correlation', 'bundle', _S,
              "How alike the regression errors of frames with similar views are: 'bundle' "
              "(each scene's model learned by mspr-export; a scene without one counts a window "
              "as one frame and sends no ~/pose_update), 'time' (exp(-dt / "
              "fusion.error_correlation_s) for every scene) or 'independent' (every frame a new "
              'measurement: over-confident on real regressions).',
              constraints='|'.join(ERROR_CORRELATION_MODES)),
    ParamSpec('fusion.error_correlation_s', 0.0, _D,
              "Correlation time (s) of fusion.error_correlation 'time' (> 0 there; unused "
              'otherwise).', float_range=(0.0, 3600.0)),
    ParamSpec('pose_update.max_correlation', 0.5, _D,
              'A frame goes to ~/pose_update (for a Kalman filter) when the decaying part of '
              'its error correlation to the last update of its scene, from the odometry travel '
              'and time between them, is at most this; its covariance is inflated by '
              '(1 + rho) / (1 - rho).', float_range=(0.0, 0.99)),
    ParamSpec('amcl_pose_topic', '', _S,
              "AMCL's pose topic (e.g. 'amcl_pose'): with publish_initialpose, seed AMCL when "
              "its covariance says it is lost. Empty: seed only after relocalizations."),
    ParamSpec('seed_amcl_position_stddev', 0.5, _D,
              'Seed AMCL when its x or y standard deviation (m) exceeds this.',
              float_range=(1.0e-3, 1.0e3)),
    ParamSpec('seed_amcl_yaw_stddev', 0.35, _D,
              'Seed AMCL when its yaw standard deviation (rad) exceeds this.',
              float_range=(1.0e-3, 10.0)),
    ParamSpec('seed_amcl_min_interval', 10.0, _D,
              'Least time (s) between two seeds: right after one, AMCL reports about the '
              'covariance it was given.', float_range=(0.0, 3600.0)),
    ParamSpec('seed_amcl_retry_period', 1.0, _D,
              'Re-send a seed (with the newest pose) every this many seconds until amcl_pose '
              "shows AMCL took it: AMCL's initialpose subscription is volatile, so a seed sent "
              'before it subscribed is lost.', float_range=(0.1, 60.0)),
    ParamSpec('seed_amcl_max_attempts', 10, _I,
              'Send one seed at most this many times in all (1: never re-sent), then give up '
              'with a warning in the log and /diagnostics.', int_range=(1, 1000)),
    ParamSpec('publish_initialpose', False, _B,
              'Seed AMCL on initialpose after activation and relocalizations, when tighter than '
              "AMCL's own estimate; re-sent until amcl_pose shows it took (amcl_pose_topic)."),
    ParamSpec('autostart', True, _B, 'Configure and activate at start-up (plain ros2 run).',
              read_only=True),
    ParamSpec('bond_heartbeat_period', 0.1, _D,
              'Heartbeat period (s) of the bond formed with a Nav2 lifecycle manager on '
              'activate (topic bond, id = node name, 4 s timeout, as nav2_util::LifecycleNode);'
              ' 0 forms no bond.', read_only=True, float_range=(0.0, 10.0)),
    ParamSpec('max_image_pixels', 4096 * 4096, _I,
              'Refuse images with more pixels than this before converting them.',
              int_range=(1, 2 ** 31 - 1)),
    ParamSpec('diagnostics_period', 1.0, _D, 'Period of /diagnostics (s). Applied at configure.',
              float_range=(0.1, 60.0)),
)
PARAM_NAMES = tuple(spec.name for spec in PARAM_SPECS)
