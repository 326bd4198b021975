"""The inference graphs ``mspr-export --onnx`` writes beside a bundle, each checked first.

The float graph (``mspr_ros.onnx_backend.export_onnx``) is compared with the torch model on
seeded random images before it is written (:func:`check_onnx`); with ``--quantize int8`` the
static int8 graph is made from it (:mod:`mspr_training.quantize`) and the bundle asks for that
one. The bundle's ``inference`` entry names the graph it runs and its SHA-256.
"""
import logging
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from mspr_ros.model.ms_transformer import MSTransformer
from mspr_ros.onnx_backend import export_onnx, onnx_path_for, OnnxSession
from mspr_training.quantize import quantize_int8

LOGGER = logging.getLogger(__name__)
# Largest |onnxruntime - torch| accepted on the random check images (float32 outputs).
ONNX_TOLERANCE = 1e-3
ONNX_CHECK_BATCH = 3
#: Training images the int8 activation ranges are calibrated on, and images it is checked on.
INT8_CALIBRATION_IMAGES = 64
INT8_CHECK_IMAGES = 16


def int8_path_for(bundle_path: str | os.PathLike) -> Path:
    """Return where the int8 graph of a bundle goes: ``model.safetensors -> model.int8.onnx``."""
    return Path(bundle_path).with_suffix('.int8.onnx')


def check_onnx(model: MSTransformer, path: Path, crop: int,
               tolerance: float = ONNX_TOLERANCE) -> dict[str, Any]:
    """Compare the ONNX graph at ``path`` with ``model`` (CPU) on seeded random images.

    Returns the check's summary for the provenance; without onnxruntime it says so and checks
    nothing.

    Raises:
        ValueError: an output differs by more than ``tolerance`` (relative to the output's
            scale when that exceeds 1), or the selected scene differs where the top two scenes
            are not tied.
    """
    try:
        import onnxruntime
    except ImportError:
        LOGGER.warning('onnxruntime is not installed: the ONNX graph %s was not checked '
                       'against the torch model', path)
        return {'checked': False, 'reason': 'onnxruntime not installed'}
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(ONNX_CHECK_BATCH, 3, crop, crop, generator=generator)
    with torch.inference_mode():
        expected = model.cpu().eval()(images)
    session = OnnxSession(path, 'cpu')
    # Batch 1 runs the session specialised to it, the whole batch the dynamic graph.
    single = session.run(images[:1].numpy())
    actual = session.run(images.numpy())
    differences = {}
    for name in ('position', 'orientation', 'scene_log_probs'):
        reference = expected[name].numpy()
        difference = float(max(np.abs(actual[name] - reference).max(),
                               np.abs(single[name] - reference[:1]).max()))
        differences[name] = difference
        if difference > tolerance * max(1.0, float(np.abs(reference).max())):
            raise ValueError(f'the ONNX graph {path} differs from the torch model by '
                             f'{difference:.3g} in {name} (tolerance {tolerance:g})')
    top2 = torch.topk(expected['scene_log_probs'], 2, dim=1).values
    decided = (top2[:, 0] - top2[:, 1] > tolerance).numpy()
    if not np.array_equal(actual['scene'][decided], expected['scene'].numpy()[decided]):
        raise ValueError(f'the ONNX graph {path} selects other scenes than the torch model')
    return {'checked': True, 'images': ONNX_CHECK_BATCH, 'max_abs_difference': differences,
            'onnxruntime_version': onnxruntime.__version__}


def write_inference_graphs(model: MSTransformer, out: Path, crop: int, opset: int,
                           provenance: dict, quantize: str | None,
                           images: Callable[[int, int], tuple[np.ndarray, np.ndarray]],
                           int8_float_nodes: Sequence[str] = ()) -> dict[str, Any]:
    """Write the float graph (and the int8 one), checked; return the bundle's inference entry.

    ``images(calibration, check)`` gives the preprocessed training images the int8 graph is
    calibrated and checked on (two disjoint arrays). The checks' summaries go into
    ``provenance`` (``onnx``, ``quantization``).
    """
    onnx_path = onnx_path_for(out)
    staged = onnx_path.with_name(f'.{onnx_path.name}.unchecked')
    try:
        try:
            digest = export_onnx(model, staged, crop, opset)
        except Exception as error:  # the exporter raises many types for unsupported ops
            raise ValueError(f'cannot export the ONNX graph: {error}') from error
        provenance['onnx'] = {'torch_exporter': 'torchscript (dynamo=False)',
                              **check_onnx(model, staged, crop)}
        os.replace(staged, onnx_path)
    finally:
        staged.unlink(missing_ok=True)
    LOGGER.info('wrote the ONNX graph %s (opset %d)', onnx_path, opset)
    inference = {'backend': 'onnxruntime', 'onnx_file': onnx_path.name, 'opset': opset,
                 'onnx_sha256': digest}
    if quantize is None:
        return inference
    if quantize != 'int8':
        raise ValueError(f"quantize must be 'int8', got {quantize!r}")
    result = quantize_int8(onnx_path, int8_path_for(out),
                           *images(INT8_CALIBRATION_IMAGES, INT8_CHECK_IMAGES), int8_float_nodes)
    provenance['quantization'] = result.summary
    return {**inference, 'onnx_file': result.path.name, 'onnx_sha256': result.sha256,
            'quantization': {key: result.summary[key] for key in
                             ('type', 'format', 'weights', 'activations', 'float_nodes')}}
