"""int8 inference graphs: static QDQ quantization of the exported ONNX graph (``--quantize int8``).

ONNX Runtime's static quantizer puts QuantizeLinear/DequantizeLinear pairs around the graph's
convolutions and matrix products: weights int8 per output channel, activations uint8 with
ranges calibrated on training images (never the evaluation split), so ONNX Runtime's CPU
kernels run them as integer arithmetic. What the int8 graph is:

- **Activation ranges** span the :data:`CALIBRATION_PERCENTILE` th percentile of each
  activation's magnitude over the calibration images, not its extremes: a few extreme values
  stretch a min-max range, and every other value then gets coarser steps. On the model trained
  on rendered world 0 (``benchmarks/int8_accuracy.py``, one trained model exported both ways
  from the same checkpoint) the min-max ranges moved the average median orientation error by
  +6.3 % and the position error by +3.7 % against the float graph; the percentile ranges by
  +3.6 % and -0.6 % (results: ``int8_accuracy.minmax.json`` and ``int8_accuracy.json``).

- **Kept in float**: the last layer of each pose head (``regressor_head_*``): its output *is* the
  position in metres or the quaternion, and one uint8 range over a scene tens of metres wide is
  a step of centimetres to decimetres. And the image's first :data:`FLOAT_LEADING_CONVS`
  convolutions (the backbone's stem and the first depthwise convolution): measured on the demo
  model (frozen EfficientNet-Lite0, ``synth_demo``), quantizing every convolution moved the
  position output by a median 11 % of its scale against the float graph; the stem in float, 3 %;
  the first two convolutions in float, 1.6 %; the transformers in float instead changed nothing.
  And every product of two activations (attention's query-key and weight-value MatMuls): with
  no weight to pre-quantize, each needs both inputs quantized at run time, which measured slower
  than float (paper model, 2 threads: 81 ms float graph, 58 ms with them in float, slower than
  float with them in int8). Further nodes can be kept in float by name pattern
  (``float_patterns``); the bundle records every node left in float.
- **Kernels**: on x86 CPUs with VNNI (AVX512-VNNI or AVX-VNNI) the u8s8 products run on its
  dot-product instructions; without VNNI, AVX2's 16-bit intermediate sums can saturate, so the
  weights are quantized to 7 bits (``reduce_range``) there. What the machine has, and so what
  ran, is recorded (:func:`int8_kernels`).
- **Checked before it is written**: the int8 graph and the float graph run on check images
  (other training images than the calibration ones); the median difference of each output,
  relative to its scale, must stay within :data:`INT8_TOLERANCE`, and the two must select the
  same scene on at least :data:`INT8_SCENE_AGREEMENT` of those where the float graph's scene is
  not a near tie. Only convolutions and matrix products are quantized
  (:data:`QUANTIZED_OPS`). What the int8 graph costs in
  accuracy on trained models is measured by ``benchmarks/onnx_latency.py`` and the README.
"""
from dataclasses import dataclass
import fnmatch
import logging
from pathlib import Path
import platform
import tempfile
from typing import Any, Sequence

import numpy as np

from mspr_ros.onnx_backend import file_sha256, INPUT_NAME, OnnxSession
from mspr_training import provenance

LOGGER = logging.getLogger(__name__)

#: Largest median |int8 - float| of an output, relative to max(1, the output's largest |value|).
INT8_TOLERANCE = 0.1
#: Least fraction of check images on which the int8 and float graphs select the same scene.
INT8_SCENE_AGREEMENT = 0.9
#: Images whose float graph's top two scene log-probabilities are closer than this (nats) are
#: left out of the scene agreement: a near tie flips on any rounding, int8 or not.
SCENE_TIE_MARGIN = 0.1
#: Percentile of each activation's magnitude its uint8 range spans (module doc).
CALIBRATION_PERCENTILE = 99.99
#: The operators quantized: where int8 kernels pay (normalisations and softmax stay float).
QUANTIZED_OPS = ('Conv', 'MatMul', 'Gemm')
#: The image's first convolutions, kept in float (module doc: what they cost in int8).
FLOAT_LEADING_CONVS = 2
#: The pose heads' last layers: their outputs are the pose itself (module doc).
HEAD_OUTPUT_PATTERN = '/model/regressor_head_*'


@dataclass(frozen=True)
class QuantizationResult:
    """What :func:`quantize_int8` wrote and how it was checked (``summary`` for the bundle)."""

    path: Path
    sha256: str
    summary: dict


def int8_kernels() -> dict[str, Any]:
    """Return the CPU's integer dot-product support and the choice it implies (``reduce_range``).

    Read from ``/proc/cpuinfo`` on Linux (:func:`mspr_training.provenance.cpu_flags`);
    elsewhere the machine's architecture only (then ``reduce_range`` stays off: ARM's int8 dot
    products do not saturate like AVX2's).
    """
    flags = provenance.cpu_flags()
    vnni = sorted(flags & {'avx512_vnni', 'avx_vnni', 'amx_int8'})
    x86 = platform.machine().lower() in ('x86_64', 'amd64', 'i686')
    avx2_only = x86 and not vnni
    return {'machine': platform.machine(), 'vnni': vnni,
            'avx512': 'avx512f' in flags, 'avx2': 'avx2' in flags,
            'reduce_range': avx2_only,
            'kernels': ('u8s8 on VNNI dot products' if vnni else
                        'u8s8 on AVX2 with 7-bit weights (no VNNI)' if avx2_only else
                        "ONNX Runtime's int8 kernels of this architecture")}


def float_nodes(model: Any, patterns: Sequence[str] = ()) -> list[str]:
    """Return the nodes kept in float (heads' last layers, leading convolutions, ``patterns``).

    Each pose head's last Gemm/MatMul, the image's first :data:`FLOAT_LEADING_CONVS`
    convolutions in graph order, every MatMul of two activations (no weight among its inputs),
    and every node whose name matches one of ``patterns``.
    """
    weights = {initializer.name for initializer in model.graph.initializer}
    products = [node.name for node in model.graph.node if node.op_type in ('Gemm', 'MatMul')]
    convolutions = [node.name for node in model.graph.node if node.op_type == 'Conv']
    last_of_head: dict[str, str] = {}
    for name in products:
        if fnmatch.fnmatch(name, HEAD_OUTPUT_PATTERN + '/*'):
            last_of_head[name.split('/')[2]] = name  # graph order: the last one stays
    chosen = set(last_of_head.values()) | set(convolutions[:FLOAT_LEADING_CONVS])
    chosen.update(node.name for node in model.graph.node
                  if node.op_type == 'MatMul' and not set(node.input) & weights)
    chosen.update(node.name for node in model.graph.node
                  if any(fnmatch.fnmatch(node.name, pattern) for pattern in patterns))
    return sorted(chosen)


class _Images:
    """ONNX Runtime's calibration reader over a float32 ``N x 3 x H x W`` array, one at a time."""

    def __init__(self, images: np.ndarray) -> None:
        self._items = iter([{INPUT_NAME: image[None]} for image in images])

    def get_next(self):  # the CalibrationDataReader protocol
        """Return the next input, or None when done."""
        return next(self._items, None)


def compare_graphs(float_path: Path, int8_path: Path, images: np.ndarray) -> dict[str, Any]:
    """Run both graphs one image at a time; return the differences the check judges."""
    reference, quantized = OnnxSession(float_path, 'cpu'), OnnxSession(int8_path, 'cpu')
    outputs = {name: [] for name in ('position', 'orientation', 'scene_log_probs')}
    agree = decided = 0
    for image in images:
        expected, actual = reference.run(image[None]), quantized.run(image[None])
        top = np.sort(expected['scene_log_probs'][0])[::-1]
        if len(top) < 2 or top[0] - top[1] > SCENE_TIE_MARGIN:
            # Near-tied scenes flip on any rounding: only decided images count.
            decided += 1
            agree += int(expected['scene'][0] == actual['scene'][0])
        for name, rows in outputs.items():
            rows.append((expected[name][0], actual[name][0]))
    figures = {}
    for name, rows in outputs.items():
        expected = np.stack([row[0] for row in rows])
        difference = np.abs(np.stack([row[1] for row in rows]) - expected)
        scale = max(1.0, float(np.abs(expected).max()))
        figures[name] = {'median_abs_difference': float(np.median(difference)),
                         'max_abs_difference': float(difference.max()),
                         'scale': scale,
                         'relative_median': float(np.median(difference)) / scale}
    return {'images': int(len(images)), 'outputs': figures, 'decided_images': decided,
            'scene_agreement': agree / decided if decided else 1.0}


def quantize_int8(float_path: Path, out_path: Path, calibration: np.ndarray,
                  check: np.ndarray, float_patterns: Sequence[str] = ()) -> QuantizationResult:
    """Write the static int8 QDQ graph of ``float_path`` to ``out_path``, checked.

    Args:
        float_path: the checked float graph (``mspr_ros.onnx_backend.export_onnx``).
        out_path: where the int8 graph goes (written only once it passed the check).
        calibration: float32 ``N x 3 x crop x crop`` preprocessed training images for the
            activation ranges.
        check: other preprocessed training images the int8 graph is checked on.
        float_patterns: further node-name patterns (``fnmatch``) to keep in float.

    Raises:
        ValueError: the int8 graph differs from the float one beyond the stated tolerance,
            naming the output and suggesting what to keep in float.
    """
    import onnx
    from onnxruntime.quantization import (CalibrationMethod, quant_pre_process, QuantFormat,
                                          quantize_static, QuantType)
    kernels = int8_kernels()
    with tempfile.TemporaryDirectory(dir=Path(out_path).parent) as scratch:
        prepared = Path(scratch) / 'prepared.onnx'
        staged = Path(scratch) / 'int8.onnx'
        # Shape inference and graph optimisation first, as ONNX Runtime advises: the
        # quantizer then sees fused nodes with known shapes (and their names are chosen here).
        quant_pre_process(str(float_path), str(prepared), skip_symbolic_shape=True)
        excluded = float_nodes(onnx.load(str(prepared)), float_patterns)

        def quantize(method, options) -> None:
            quantize_static(str(prepared), str(staged), _Images(calibration),
                            quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=method, extra_options=options,
                            reduce_range=kernels['reduce_range'], nodes_to_exclude=excluded,
                            op_types_to_quantize=list(QUANTIZED_OPS))
        activations = f'uint8, ranges at the {CALIBRATION_PERCENTILE:g}th percentile'
        try:
            quantize(CalibrationMethod.Percentile, {'CalibPercentile': CALIBRATION_PERCENTILE})
        except ValueError as error:
            # ONNX Runtime's percentile calibrator histograms every activation, and fails on one
            # that is the same value on every calibration image (numpy: "Too many bins for data
            # range"). Min-max ranges have no such case; the bundle and the log say why.
            if 'bins' not in str(error):
                raise
            LOGGER.warning('int8 of %s: percentile calibration failed (%s); min-max ranges '
                           'instead', float_path, error)
            activations = f'uint8, MinMax ranges (percentile calibration failed: {error})'
            quantize(CalibrationMethod.MinMax, {})
        figures = compare_graphs(float_path, staged, check)
        for name, values in figures['outputs'].items():
            if values['relative_median'] > INT8_TOLERANCE:
                raise ValueError(
                    f'the int8 graph of {float_path} differs from the float graph by a median '
                    f"{values['median_abs_difference']:.3g} in {name} (more than "
                    f'{INT8_TOLERANCE:g} of its scale {values["scale"]:.3g}); keep more of it in '
                    'float (--int8-float-nodes PATTERN)')
        if figures['scene_agreement'] < INT8_SCENE_AGREEMENT:
            raise ValueError(f'the int8 graph of {float_path} selects another scene than the '
                             f"float graph on {1 - figures['scene_agreement']:.0%} of the check "
                             f'images (at most {1 - INT8_SCENE_AGREEMENT:.0%} allowed)')
        Path(staged).replace(out_path)
    summary = {'type': 'int8', 'format': 'QDQ', 'weights': 'int8, per output channel',
               'activations': activations,
               'calibration_images': int(len(calibration)),
               'calibration_source': 'training split', 'float_nodes': excluded,
               'cpu': kernels, 'check': {**figures, 'tolerance': INT8_TOLERANCE,
                                         'scene_agreement_needed': INT8_SCENE_AGREEMENT}}
    LOGGER.info('wrote the int8 graph %s (%d nodes kept in float)', out_path, len(excluded))
    return QuantizationResult(Path(out_path), file_sha256(out_path), summary)


def training_images(cfg: Any, root: Any, calibration: int, check: int, seed: int = 0
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Return (calibration, check) preprocessed training images, float32 N x 3 x crop x crop.

    Seeded draws over the whole training split (every scene in proportion), disjoint. A split
    smaller than ``calibration + check`` gives a quarter of it (at least one image) to the check
    and the rest to calibration.
    """
    from mspr_training.data import load_rgb
    from mspr_training.datasets import read_split
    from mspr_training.transforms import eval_transform
    samples = [s for scene in read_split(cfg.data, cfg.data.train_split, root).values()
               for s in scene]
    if len(samples) < 2:
        raise ValueError(f'the training split has {len(samples)} images: too few to calibrate '
                         'and check an int8 graph')
    if calibration + check > len(samples):
        check = max(1, len(samples) // 4)
        calibration = len(samples) - check
    order = np.random.default_rng(seed).permutation(len(samples))
    transform = eval_transform(cfg.augmentation)

    def stack(indices):
        return np.stack([transform(load_rgb(samples[i])).numpy() for i in sorted(indices)])
    return stack(order[:calibration]), stack(order[calibration:calibration + check])
