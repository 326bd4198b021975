"""Parameter declaration and validation over real DDS, and the validation rules themselves.

- A node started with an unavailable device and bad frame names fails configure with one error
  that lists every problem, and stays unconfigured.
- Runtime ``set_parameters`` requests are refused with a reason when they break a range,
  a read-only flag or the frame chain; valid ones are accepted.
- Descriptors (read-only, ranges, descriptions) are visible through ``describe_parameters``.
- An out-of-range override at start-up stops the process with a message naming the parameter.
- Without a node: the enumerations and the precision parameters (``fp16`` a deprecated alias),
  and configure loading the localizer as they say; ``fusion.error_correlation`` resolved for a
  bundle's scenes ('bundle' falls back to one frame's worth where nothing was learned, 'time'
  needs ``fusion.error_correlation_s > 0``).
"""
from dataclasses import replace
import logging
import math

from lifecycle_msgs.msg import Transition
import pytest
from rcl_interfaces.msg import ParameterType
from rcl_interfaces.srv import DescribeParameters

from mspr_ros.estimation.error_correlation import ErrorCorrelation
from mspr_ros.ros.configure import load_localizer
from mspr_ros.ros.params import error_correlations, fusion_config, NodeParams, PARAM_NAMES
from mspr_ros.ros.params import PARAM_SPECS
from mspr_ros.ros.params import ParameterValidationError, parse_scene_alignment
from ros_harness import domain_id, NodeProcess, RosClient, stop_all

pytestmark = pytest.mark.ros
NAME = 'params_node'
FQN = f'/{NAME}'


@pytest.fixture(scope='module')
def system(tiny_bundle_path, tmp_path_factory):
    """Start a node with invalid parameters, one with an out-of-range override, and a client."""
    tmp = tmp_path_factory.mktemp('params')
    domain = domain_id(4)
    bad = NodeProcess(domain, tmp / 'bad.log', name=NAME, params={
        'weights': str(tiny_bundle_path), 'device': 'cuda:7', 'base_frame_id': 'odom',
        'camera_frame_id': '/camera', 'precision': 'fp8'})
    out_of_range = NodeProcess(domain, tmp / 'range.log', name='range_node',
                               params={'weights': str(tiny_bundle_path), 'max_rate': -1.0})
    client = RosClient(domain)
    try:
        yield bad, out_of_range, client
    finally:
        client.close()
        stop_all([bad, out_of_range])


def test_configure_fails_listing_every_invalid_parameter(system):
    bad, _, client = system
    error = bad.wait_for_output(r'\[ERROR\].*configure failed: (.*)').group(1)
    assert "'cuda:7'" in error and 'CUDA is not available' in error
    assert "global_frame_id" not in error
    assert "odom_frame_id and base_frame_id are both 'odom'" in error
    assert "camera_frame_id '/camera' is not a valid tf2 frame id" in error
    assert "precision 'fp8' is not one of fp32, fp16, bf16" in error
    assert client.get_state(FQN) == 'unconfigured'


def test_runtime_changes_are_validated(system):
    bad, _, client = system
    bad.wait_for_output('configure failed')
    refused = {
        'max_rate': -1.0,                 # descriptor range
        'min_scene_confidence': 1.5,      # descriptor range
        'weights': '/elsewhere.safetensors',  # read-only
        'global_frame_id': '',            # frame validation
        'covariance.mode': 'bogus',       # enumeration
        'camera_to_base': [0.0, 1.0],     # length
        'fusion.error_correlation': 'time',   # needs fusion.error_correlation_s > 0 (is 0)
        'pose_update.max_correlation': 1.0,   # descriptor range: 1 would never decorrelate
    }
    for name, value in refused.items():
        result = client.set_parameters(FQN, {name: value})[0]
        assert not result.successful, f'{name}={value!r} was accepted'
        assert result.reason, f'{name}: no reason given'
    reasons = {name: client.set_parameters(FQN, {name: value})[0].reason
               for name, value in refused.items()}
    assert 'global_frame_id is empty' in reasons['global_frame_id']
    assert 'bogus' in reasons['covariance.mode']
    assert 'read-only' in reasons['weights'] or 'read only' in reasons['weights']
    assert 'fusion.error_correlation_s > 0' in reasons['fusion.error_correlation']

    accepted = client.set_parameters(FQN, {'max_rate': 5.0, 'base_frame_id': 'base_link',
                                           'camera_frame_id': 'camera_optical'})
    assert all(result.successful for result in accepted), [r.reason for r in accepted]
    values = client.get_parameters(FQN, ['max_rate', 'base_frame_id'])
    assert values[0].double_value == 5.0 and values[1].string_value == 'base_link'

    # Frames fixed: configuring again fails for the device and the (read-only) precision alone.
    assert not client.change_state(FQN, Transition.TRANSITION_CONFIGURE)
    errors = [line for line in bad.output().splitlines() if 'configure failed' in line]
    assert len(errors) == 2 and 'cuda:7' in errors[1] and 'frame' not in errors[1]
    assert client.get_state(FQN) == 'unconfigured'


def test_descriptors_document_every_parameter(system):
    _, _, client = system
    request = DescribeParameters.Request(names=list(PARAM_NAMES))
    response = client.call(DescribeParameters, f'{FQN}/describe_parameters', request)
    descriptors = {d.name: d for d in response.descriptors}
    assert set(descriptors) == set(PARAM_NAMES)
    assert all(d.description for d in descriptors.values())
    for name in ('weights', 'device', 'image_transport', 'image_qos', 'autostart', 'precision',
                 'cuda_graphs', 'torch_compile', 'fp16'):
        assert descriptors[name].read_only, name
    assert descriptors['precision'].additional_constraints == 'fp32|fp16|bf16'
    assert 'Deprecated' in descriptors['fp16'].description
    for name in ('min_scene_confidence', 'max_jump_translation', 'tf_broadcast'):
        assert not descriptors[name].read_only, name
    for name in ('max_rate', 'max_image_age', 'transform_tolerance', 'transform_timeout'):
        (limits,) = descriptors[name].floating_point_range
        assert limits.from_value == 0.0 and limits.to_value > 0.0, name
    assert descriptors['max_image_pixels'].integer_range[0].from_value == 1
    assert descriptors['allowed_scenes'].type == ParameterType.PARAMETER_STRING_ARRAY
    correlation = descriptors['fusion.error_correlation']
    assert correlation.additional_constraints == 'bundle|time|independent'
    assert not correlation.read_only and 'over-confident' in correlation.description
    (limits,) = descriptors['pose_update.max_correlation'].floating_point_range
    assert (limits.from_value, limits.to_value) == (0.0, 0.99)


def test_out_of_range_override_stops_the_process_with_a_clear_message(system):
    _, out_of_range, _ = system
    out_of_range.process.wait(60)
    assert out_of_range.process.returncode != 0
    output = out_of_range.output()
    assert 'invalid parameter' in output and 'max_rate' in output
    assert 'Traceback' not in output


def _defaults():
    return {spec.name: spec.default for spec in PARAM_SPECS} | {'weights': '/w.safetensors'}


def test_validation_reports_every_problem_with_the_parameters_involved():
    values = _defaults() | {'global_frame_id': '', 'odom_frame_id': 'base_link',
                            'image_qos': 'fast', 'camera_to_base': [0.0] * 5}
    with pytest.raises(ParameterValidationError) as caught:
        NodeParams.from_values(values)
    problems = caught.value.problems
    assert {p.names for p in problems} == {
        ('global_frame_id',), ('odom_frame_id', 'base_frame_id'), ('image_qos',),
        ('camera_to_base',)}
    assert caught.value.involving({'image_qos'})[0].text.startswith("image_qos 'fast'")
    params = NodeParams.from_values(_defaults() | {'odom_frame_id': ''})
    assert params.odom_frame_id == '' and params.covariance.mode == 'calibrated'


@pytest.mark.parametrize('value, problem', [
    ([0.0] * 7, '8 finite numbers'), ([0, 0, 0, 0, 0, 0, 0, 1.0], 'non-zero'),
    ([0, 0, 0, 0, 0, 0, 1.0, -2.0], 'scale positive'),
    ([0, 0, float('nan'), 0, 0, 0, 1.0, 1.0], '8 finite numbers')])
def test_scene_alignment_parameter_is_validated(value, problem):
    with pytest.raises(ParameterValidationError, match=problem) as caught:
        parse_scene_alignment('atrium', value)
    assert 'scenes.atrium.map_from_scene' in str(caught.value)
    parsed = parse_scene_alignment('atrium', [1, 2, 3, 0, 0, 0, 2.0, 1.5])
    assert parsed == {'translation': [1.0, 2.0, 3.0], 'rotation_xyzw': [0.0, 0.0, 0.0, 1.0],
                      'scale': 1.5}


def test_fusion_parameters_reach_the_fusion_and_none_turns_it_off():
    params = NodeParams.from_values(_defaults() | {'fusion.window_s': 4.0,
                                                   'fusion.window_distance_m': 2.5,
                                                   'fusion.odometry_drift_per_m': 0.05,
                                                   'fusion.odometry_rotation_drift_per_m': 0.003,
                                                   'fusion.error_correlation': 'time',
                                                   'fusion.error_correlation_s': 1.5,
                                                   'two_d_mode': True})
    config = fusion_config(params, error_correlations(params, {}, ['lab', 'atrium']))
    assert (config.window_s, config.window_distance_m, config.odometry_drift_per_m,
            config.odometry_rotation_drift_per_m, config.two_d) == (4.0, 2.5, 0.05, 0.003, True)
    by_time = ErrorCorrelation.from_time(1.5)
    assert config.error_correlation == {'lab': by_time, 'atrium': by_time}
    assert config.default_correlation == by_time
    params = NodeParams.from_values(_defaults() | {'fusion': 'none'})
    assert fusion_config(params, error_correlations(params, {}, ['lab'])) is None


LEARNED = ErrorCorrelation(length_m=0.5, angle_rad=0.3, time_s=math.inf, floor=0.1,
                           source='bundle')


def test_error_correlation_bundle_mode_falls_back_to_one_frame_where_nothing_was_learned():
    params = NodeParams.from_values(_defaults())
    assert (params.fusion_error_correlation, params.fusion_error_correlation_s,
            params.pose_update_max_correlation) == ('bundle', 0.0, 0.5)
    correlations = error_correlations(params, {'lab': LEARNED}, ['lab', 'atrium', 'corridor'])
    assert correlations.models == {'lab': LEARNED, 'atrium': ErrorCorrelation.one_frame(),
                                   'corridor': ErrorCorrelation.one_frame()}
    assert correlations.fallback == ('atrium', 'corridor')
    assert correlations.default == ErrorCorrelation.one_frame()
    assert correlations.describe(params) == (
        "bundle (no learned model, one frame's worth: atrium, corridor)")
    learned = error_correlations(params, {'lab': LEARNED}, ['lab'])
    assert learned.fallback == () and learned.describe(params) == (
        'bundle (learned for every scene)')
    blocks = replace(LEARNED, rotation=ErrorCorrelation(0.5, 0.2, None, 0.0, 'fitted'))
    assert error_correlations(params, {'lab': blocks, 'atrium': LEARNED}, ['lab', 'atrium',
                                                                           'corridor']).describe(
        params) == ("bundle (no learned model, one frame's worth: corridor; position and "
                    'rotation apart: lab)')
    config = fusion_config(params, correlations)
    assert config.error_correlation == correlations.models


def test_error_correlation_independent_and_time_modes_ignore_the_bundle():
    params = NodeParams.from_values(_defaults() | {'fusion.error_correlation': 'independent',
                                                   'pose_update.max_correlation': 0.3})
    correlations = error_correlations(params, {'lab': LEARNED}, ['lab', 'atrium'])
    assert set(correlations.models.values()) == {ErrorCorrelation.independent()}
    assert correlations.fallback == () and 'over-confident' in correlations.describe(params)
    assert params.pose_update_max_correlation == 0.3
    with pytest.raises(ParameterValidationError) as caught:
        NodeParams.from_values(_defaults() | {'fusion.error_correlation': 'time'})
    [problem] = caught.value.problems
    assert problem.names == ('fusion.error_correlation', 'fusion.error_correlation_s')
    assert problem.text == ("fusion.error_correlation 'time' needs fusion.error_correlation_s "
                            '> 0, got 0.0')
    with pytest.raises(ParameterValidationError, match="'learned' is not one of bundle, time"):
        NodeParams.from_values(_defaults() | {'fusion.error_correlation': 'learned'})
    params = NodeParams.from_values(_defaults() | {'fusion.error_correlation': 'time',
                                                   'fusion.error_correlation_s': 2.0})
    assert error_correlations(params, {}, ['lab']).describe(params) == 'time (2 s)'


def test_precision_parameters_are_validated_and_fp16_is_a_deprecated_alias():
    params = NodeParams.from_values(_defaults())
    assert (params.precision, params.cuda_graphs, params.fp16) == ('fp32', False, False)
    params = NodeParams.from_values(_defaults() | {'precision': 'bf16', 'cuda_graphs': True})
    assert (params.precision, params.cuda_graphs) == ('bf16', True)
    assert NodeParams.from_values(_defaults() | {'fp16': True}).precision == 'fp16'
    assert NodeParams.from_values(_defaults() | {'fp16': True,
                                                 'precision': 'fp16'}).precision == 'fp16'
    with pytest.raises(ParameterValidationError) as caught:
        NodeParams.from_values(_defaults() | {'precision': 'fp8'})
    [problem] = caught.value.problems
    assert problem.names == ('precision',)
    assert problem.text == "precision 'fp8' is not one of fp32, fp16, bf16"
    with pytest.raises(ParameterValidationError) as caught:
        NodeParams.from_values(_defaults() | {'precision': 'bf16', 'fp16': True})
    [problem] = caught.value.problems
    assert problem.names == ('fp16', 'precision') and 'set fp16 false' in problem.text


def test_configure_loads_the_localizer_with_the_precision_parameters(tiny_bundle_path, caplog):
    """The model runs as the parameters say; the deprecated fp16 warns (then falls back here)."""
    weights = {'weights': str(tiny_bundle_path)}
    with caplog.at_level(logging.WARNING, logger='mspr_ros'):
        localizer = load_localizer(NodeParams.from_values(
            _defaults() | weights | {'precision': 'bf16'}), 'cpu')
    assert (localizer.precision, localizer.cuda_graphs) == ('bf16', False)
    assert caplog.records == []
    with caplog.at_level(logging.WARNING, logger='mspr_ros'):
        localizer = load_localizer(NodeParams.from_values(
            _defaults() | weights | {'fp16': True, 'cuda_graphs': True}), 'cpu')
    texts = [record.getMessage() for record in caplog.records]
    assert len(texts) == 3, texts
    assert 'parameter fp16 is deprecated' in texts[0] and 'precision fp16' in texts[0]
    assert 'precision fp16 needs torch on CUDA' in texts[1]
    assert 'cuda_graphs asked for' in texts[2]
    assert (localizer.precision, localizer.cuda_graphs) == ('fp32', False)


def test_configure_compiles_the_model_when_torch_compile_is_set(tiny_bundle_path):
    """torch_compile reaches the Localizer (compiled at configure); with cuda_graphs it stops."""
    weights = {'weights': str(tiny_bundle_path)}
    assert not NodeParams.from_values(_defaults() | weights).torch_compile
    localizer = load_localizer(NodeParams.from_values(
        _defaults() | weights | {'torch_compile': True}), 'cpu')
    assert localizer.torch_compile and not localizer.cuda_graphs
    with pytest.raises(RuntimeError, match='torch_compile and cuda_graphs exclude each other'):
        load_localizer(NodeParams.from_values(
            _defaults() | weights | {'torch_compile': True, 'cuda_graphs': True}), 'cpu')
