"""Reduced precision and CUDA graphs in the Localizer.

On every machine: the precision rule, argument validation, the deprecated ``fp16`` alias, the
fall-backs (one warning, fp32 or eager runs), bf16 autocast on the CPU against fp32, and the
dispatch rule "the graph serves single images only" (with a stand-in for the captured graph).
Where CUDA exists: capture and replay against eager, successive images through the graph, and
fp16/bf16 against fp32 on the GPU.
"""
import logging

import numpy as np
import pytest
import skimage.data
import torch

from mspr_ros.bundle import load_bundle
from mspr_ros.cuda_graph import cuda_graph_obstacle, CudaGraphForward
from mspr_ros.localizer import asked_precision, Localizer
from mspr_ros.precision import PRECISIONS, resolve_precision
from mspr_ros.preprocess import preprocess_batch

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason='CUDA graphs and fp16 need CUDA; this machine has none')
# bf16 keeps 8 significant bits: through the tiny model's layers the raw outputs (of size ~0.3)
# move by about 0.01 and scene probabilities by about 0.003 (measured on the CPU).
BF16_OUTPUT_ATOL = 0.05
BF16_PROBABILITY_ATOL = 0.02
# fp16 keeps 11 significant bits: 8x closer than bf16.
FP16_OUTPUT_ATOL = 0.01
FP16_PROBABILITY_ATOL = 0.005
# Graph replay runs the same kernels as eager; only the reduction order may differ.
GRAPH_ATOL = 1e-5


def photos() -> list:
    """Return four different photographs: different sizes, scenes and poses."""
    return [skimage.data.astronaut(), skimage.data.coffee(), skimage.data.chelsea(),
            np.ascontiguousarray(skimage.data.rocket()[:, ::-1])]


@pytest.fixture(scope='module')
def bundle(tiny_bundle_path):
    """Return the shared tiny bundle, loaded once."""
    return load_bundle(tiny_bundle_path)


@pytest.fixture(scope='module')
def fp32_cpu(bundle) -> Localizer:
    """Return the float32 CPU reference."""
    return Localizer(bundle, device='cpu')


def warnings_of(caplog) -> list:
    """Return the texts of the localizer's warning records."""
    return [record.getMessage() for record in caplog.records
            if record.name == 'mspr_ros.localizer' and record.levelno == logging.WARNING]


def assert_results_close(actual, expected, output_atol: float, probability_atol: float) -> None:
    """Check: same scene; probabilities, position and orientation within the tolerances."""
    assert actual.scene_index == expected.scene_index
    np.testing.assert_allclose(actual.scene_probabilities, expected.scene_probabilities,
                               atol=probability_atol)
    np.testing.assert_allclose(actual.position, expected.position, atol=output_atol)
    for result in (actual, expected):
        assert result.position.dtype == np.float64 and result.orientation.dtype == np.float64
        assert np.linalg.norm(result.orientation) == pytest.approx(1.0)
        assert result.orientation[3] >= 0


@pytest.mark.parametrize('requested, device, backend, bf16, runs, warns', [
    ('fp32', 'cpu', 'torch', True, 'fp32', False),
    ('fp32', 'cuda', 'onnxruntime', True, 'fp32', False),
    ('fp16', 'cuda', 'torch', True, 'fp16', False),
    ('bf16', 'cuda', 'torch', True, 'bf16', False),
    ('bf16', 'cpu', 'torch', False, 'bf16', False),  # bf16_supported concerns GPUs only
    ('fp16', 'cpu', 'torch', True, 'fp32', True),
    ('bf16', 'cuda', 'torch', False, 'fp32', True),
    ('fp16', 'cuda', 'onnxruntime', True, 'fp32', True),
    ('bf16', 'cpu', 'onnxruntime', True, 'fp32', True),
])
def test_the_precision_rule(requested, device, backend, bf16, runs, warns):
    """fp16 needs torch on CUDA, bf16 torch on the CPU or a bf16 GPU; else fp32, with a reason."""
    precision, warning = resolve_precision(requested, device, backend, bf16)
    assert precision == runs
    assert bool(warning) == warns
    if warns:
        assert f'precision {requested}' in warning and 'running fp32' in warning
        assert backend in warning and device in warning


@pytest.mark.parametrize('precision', ['fp8', 'FP16', 'float16', '', None])
def test_an_unknown_precision_is_refused_naming_the_allowed_ones(bundle, precision):
    with pytest.raises(ValueError, match='fp32, fp16, bf16') as caught:
        Localizer(bundle, device='cpu', precision=precision)
    assert repr(precision) in str(caught.value)
    assert PRECISIONS == ('fp32', 'fp16', 'bf16')


def test_the_fp16_flag_is_a_deprecated_alias(bundle, caplog):
    """fp16=True means precision 'fp16' (here falling back on the CPU), with a deprecation."""
    assert asked_precision('bf16', None) == 'bf16'
    with pytest.warns(DeprecationWarning, match="precision='fp16'"):
        assert asked_precision('fp32', True) == 'fp16'
    with pytest.warns(DeprecationWarning):
        assert asked_precision('bf16', False) == 'bf16'
    with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match='contradicts'):
        asked_precision('bf16', True)
    with caplog.at_level(logging.WARNING, logger='mspr_ros.localizer'), \
            pytest.warns(DeprecationWarning):
        localizer = Localizer(bundle, device='cpu', fp16=True)
    assert warnings_of(caplog) == [
        'precision fp16 needs torch on CUDA (bf16 runs on the CPU); running fp32 with torch '
        'on cpu']
    assert localizer.precision == 'fp32'


def test_bf16_runs_on_the_cpu_close_to_fp32(bundle, fp32_cpu, caplog):
    """bf16 autocast really runs (bfloat16 outputs) and stays within tolerance of fp32."""
    with caplog.at_level(logging.WARNING, logger='mspr_ros.localizer'):
        localizer = Localizer(bundle, device='cpu', precision='bf16')
    assert warnings_of(caplog) == []
    assert localizer.precision == 'bf16' and not localizer.cuda_graphs
    batch = preprocess_batch(photos(), bundle.preprocessing)
    raw, reference = localizer.run_model(batch), fp32_cpu.run_model(batch)
    for key in ('position', 'orientation', 'scene_log_probs'):
        assert raw[key].dtype == torch.bfloat16, key
        assert reference[key].dtype == torch.float32, key
        torch.testing.assert_close(raw[key].float(), reference[key], rtol=0,
                                   atol=BF16_OUTPUT_ATOL)
    results = localizer.localize_batch(photos(), batch_size=2)
    for actual, expected in zip(results, fp32_cpu.localize_batch(photos())):
        assert_results_close(actual, expected, BF16_OUTPUT_ATOL, BF16_PROBABILITY_ATOL)


def test_cuda_graphs_where_they_cannot_run_warn_once_and_run_eagerly(bundle, fp32_cpu, caplog):
    with caplog.at_level(logging.WARNING, logger='mspr_ros.localizer'):
        localizer = Localizer(bundle, device='cpu', cuda_graphs=True)
    assert warnings_of(caplog) == [
        'cuda_graphs asked for, but they need a CUDA device, not cpu; running eagerly']
    assert not localizer.cuda_graphs and localizer.precision == 'fp32'
    photo = skimage.data.coffee()
    np.testing.assert_array_equal(localizer.localize(photo).position,
                                  fp32_cpu.localize(photo).position)
    assert cuda_graph_obstacle(torch.device('cpu'), 'torch') is not None
    assert 'onnxruntime' in cuda_graph_obstacle(torch.device('cuda'), 'onnxruntime')
    assert cuda_graph_obstacle(torch.device('cuda', 1), 'torch') is None
    with pytest.raises(ValueError, match='CUDA device'):
        CudaGraphForward(fp32_cpu.model, torch.device('cpu'), (1, 3, 224, 224))


class StandInGraph:
    """Records how the localizer builds and calls its graph; runs the model eagerly."""

    built: list = []

    def __init__(self, model, device, input_shape, autocast_dtype):
        """Record the capture arguments."""
        self.model, self.calls = model, []
        StandInGraph.built.append((self, device, input_shape, autocast_dtype))

    def __call__(self, images):
        """Record the batch size and answer as the captured graph would."""
        self.calls.append(images.shape[0])
        with torch.inference_mode():
            return self.model(images)


@pytest.mark.parametrize('precision, dtype', [('fp32', None), ('bf16', torch.bfloat16)])
def test_the_graph_serves_single_images_and_batches_run_eagerly(bundle, monkeypatch, precision,
                                                                dtype):
    """Single images go through the graph, captured for (1, 3, crop, crop); batches do not."""
    monkeypatch.setattr('mspr_ros.localizer.cuda_graph_obstacle', lambda device, backend: None)
    monkeypatch.setattr('mspr_ros.localizer.CudaGraphForward', StandInGraph)
    StandInGraph.built.clear()
    localizer = Localizer(bundle, device='cpu', precision=precision, cuda_graphs=True)
    [(graph, device, shape, autocast_dtype)] = StandInGraph.built
    crop = bundle.preprocessing.crop
    assert (device, shape, autocast_dtype) == (torch.device('cpu'), (1, 3, crop, crop), dtype)
    assert localizer.cuda_graphs and localizer.precision == precision
    images = photos()
    localizer.localize(images[0])
    assert graph.calls == [1]
    localizer.localize_batch(images[:3], batch_size=3)
    assert graph.calls == [1]
    localizer.localize_batch(images[:3], batch_size=2)  # a batch of 2, then one of 1
    assert graph.calls == [1, 1]
    localizer.warmup(2)
    assert graph.calls == [1, 1, 1, 1]


# ---------------------------------------------------------------- where CUDA exists


@pytest.fixture(scope='module')
def fp32_cuda(bundle) -> Localizer:
    """Return the float32 eager reference on the GPU."""
    return Localizer(bundle, device='cuda')


@needs_cuda
def test_graph_replays_equal_eager_image_after_image(bundle, fp32_cuda):
    """Each replay reads the newly copied image (no stale input) and equals eager to 1e-5."""
    graphed = Localizer(bundle, device='cuda', cuda_graphs=True)
    assert graphed.cuda_graphs and graphed.precision == 'fp32'
    results = [graphed.localize(photo) for photo in photos()]
    for photo, result in zip(photos(), results):
        expected = fp32_cuda.localize(photo)
        assert result.scene_index == expected.scene_index
        np.testing.assert_allclose(result.position, expected.position, atol=GRAPH_ATOL)
        np.testing.assert_allclose(result.orientation, expected.orientation, atol=GRAPH_ATOL)
        np.testing.assert_allclose(result.scene_probabilities, expected.scene_probabilities,
                                   atol=GRAPH_ATOL)
    # Different photos give different poses: a stale static buffer would repeat one.
    positions = np.stack([result.position for result in results])
    assert np.abs(np.diff(positions, axis=0)).max(axis=1).min() > 100 * GRAPH_ATOL
    batch = preprocess_batch(photos(), bundle.preprocessing)
    crop = bundle.preprocessing.crop
    graph = CudaGraphForward(fp32_cuda.model, fp32_cuda.device, (1, 3, crop, crop))
    for index in range(len(photos())):
        torch.testing.assert_close(graph(batch[index:index + 1])['position'],
                                   fp32_cuda.run_model(batch[index:index + 1])['position'],
                                   rtol=0, atol=GRAPH_ATOL)
    with pytest.raises(ValueError, match='captured for input'):
        graph(batch)
    eager_batch = graphed.run_model(batch)  # 4 images: eager
    torch.testing.assert_close(eager_batch['position'], fp32_cuda.run_model(batch)['position'],
                               rtol=0, atol=GRAPH_ATOL)


@needs_cuda
def test_the_graph_returns_copies_that_later_replays_leave_alone(bundle):
    graphed = Localizer(bundle, device='cuda', cuda_graphs=True)
    first, second = (preprocess_batch([photo], bundle.preprocessing) for photo in photos()[:2])
    kept = graphed.run_model(first)['position']
    snapshot = kept.clone()
    graphed.run_model(second)
    torch.cuda.synchronize()
    assert torch.equal(kept, snapshot)


@needs_cuda
@pytest.mark.parametrize('cuda_graphs', [False, True])
@pytest.mark.parametrize('precision, output_atol, probability_atol', [
    ('fp16', FP16_OUTPUT_ATOL, FP16_PROBABILITY_ATOL),
    ('bf16', BF16_OUTPUT_ATOL, BF16_PROBABILITY_ATOL)])
def test_reduced_precision_on_cuda_stays_close_to_fp32(bundle, fp32_cuda, precision,
                                                       output_atol, probability_atol,
                                                       cuda_graphs):
    if precision == 'bf16' and torch.cuda.get_device_capability() < (8, 0):
        pytest.skip('this GPU has no bfloat16 (compute capability below 8.0)')
    localizer = Localizer(bundle, device='cuda', precision=precision, cuda_graphs=cuda_graphs)
    assert localizer.precision == precision and localizer.cuda_graphs == cuda_graphs
    half = {'fp16': torch.float16, 'bf16': torch.bfloat16}[precision]
    one = preprocess_batch(photos()[:1], bundle.preprocessing)
    assert localizer.run_model(one)['position'].dtype == half
    for photo in photos():
        assert_results_close(localizer.localize(photo), fp32_cuda.localize(photo), output_atol,
                             probability_atol)
