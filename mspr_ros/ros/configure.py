"""What the node's configure transition loads: parameters, the model, the scene alignments."""
import logging
from typing import Dict, Tuple

from mspr_ros.geometry.transforms import SceneAlignment
from mspr_ros.ros.params import alignment_to_param, error_correlations, ErrorCorrelations
from mspr_ros.ros.params import NodeParams, ParameterValidationError
from mspr_ros.ros.params import parse_scene_alignment, read_node_parameters
from mspr_ros.ros.params import scene_alignment_descriptor, scene_param_name

# Under mspr_ros: the node forwards these records to its ROS logger during configure.
LOGGER = logging.getLogger(__name__)


def validated_parameters(node) -> Tuple[NodeParams, str]:
    """Return the parameters and the resolved device, or raise ValueError listing every problem."""
    from mspr_ros.device import resolve_device
    problems = []
    params = None
    try:
        params = read_node_parameters(node)
    except ParameterValidationError as error:
        problems.extend(problem.text for problem in error.problems)
    try:
        device = str(resolve_device(node.get_parameter('device').value))
    except ValueError as error:
        problems.append(str(error))
    if problems:
        raise ValueError('invalid parameters: ' + '; '.join(problems))
    return params, device


def load_localizer(params: NodeParams, device: str):
    """Load and warm up the weights bundle; any error names the file."""
    import torch
    from mspr_ros.localizer import Localizer
    if params.cpu_threads > 0:
        torch.set_num_threads(params.cpu_threads)
    if params.fp16:
        LOGGER.warning('parameter fp16 is deprecated: set precision: fp16 instead (asking for '
                       'precision %s)', params.precision)
    try:
        localizer = Localizer.from_file(params.weights, device=device,
                                        precision=params.precision,
                                        cuda_graphs=params.cuda_graphs,
                                        torch_compile=params.torch_compile)
        localizer.warmup()
    except Exception as error:
        text = str(error)
        # Every weights problem must name the file, whatever raised it.
        if params.weights not in text:
            text = f'weights {params.weights}: {text}'
        raise RuntimeError(text) from error
    return localizer


def scene_alignments(node, localizer) -> Dict[str, SceneAlignment]:
    """Declare ``scenes.<name>.map_from_scene`` (bundle value as default) and read them."""
    alignments = {}
    for scene in localizer.scene_names:
        name = scene_param_name(scene)
        bundle_value = localizer.bundle.scene_alignment[scene].to_dict()
        if not node.has_parameter(name):
            node.declare_parameter(name, alignment_to_param(bundle_value),
                                   scene_alignment_descriptor(scene))
        value = parse_scene_alignment(scene, node.get_parameter(name).value)
        alignments[scene] = SceneAlignment.from_dict(value, context=name)
    return alignments


def error_correlation_models(params: NodeParams, localizer, logger=None) -> ErrorCorrelations:
    """Return ``fusion.error_correlation`` resolved for the bundle's scenes.

    With ``logger`` (configure), the scenes that fell back to one frame's worth are named in a
    warning: the fused covariance stops shrinking and ``~/pose_update`` stays silent for them.
    """
    correlations = error_correlations(params, localizer.bundle.error_correlation,
                                      localizer.scene_names)
    if logger is not None and correlations.fallback:
        logger.warning(
            f'no learned error correlation in {localizer.bundle.path} for scenes '
            f"{', '.join(correlations.fallback)}: their fusion window counts as one frame and "
            '~/pose_update publishes nothing for them (a filter would count one view many '
            "times); export the bundle again to learn it, or set fusion.error_correlation "
            "'time'")
    return correlations


def torch_threads() -> int:
    """Return PyTorch's intra-op thread count in this process."""
    import torch
    return torch.get_num_threads()
