"""The Localizer's torch_compile: compiled at construction, the eager answers, a clear failure.

Against the real ``torch.compile`` (TorchInductor's C++ kernels, the machine's C++ compiler) on
the tiny bundle: a stream of different images answered as the eager localizer answers them, a
batch of another size (compiled again), the refusal next to CUDA graphs, the warning with the
onnxruntime back-end, and a compile that cannot run (no C++ compiler) stopping the construction
with the reason. The speed is measured in benchmarks/torch_latency.py, not here.
"""
import logging
import threading

import numpy as np
import pytest
from test_localizer_precision import photos
from test_onnx_backend import save_tiny_checkpoint
import torch
from torch._dynamo.eval_frame import OptimizedModule
from torch._inductor import config as inductor_config

from mspr_ros.bundle import load_bundle
from mspr_ros.compiled_forward import CompileError
from mspr_ros.localizer import Localizer
from mspr_training import export

# Generated kernels sum in another order than the eager ones: float32 rounding, ~1e-6 here.
OUTPUT_ATOL = 1e-4


@pytest.fixture(scope='module')
def bundle(tiny_bundle_path):
    """Return the shared tiny bundle, loaded once."""
    return load_bundle(tiny_bundle_path)


@pytest.fixture(scope='module')
def compiled(bundle) -> Localizer:
    """Return a CPU localizer that runs the compiled model."""
    return Localizer(bundle, device='cpu', torch_compile=True)


def assert_same_answer(actual, expected) -> None:
    """Check: same scene; probabilities, position and orientation to float rounding."""
    assert actual.scene_index == expected.scene_index
    for name in ('scene_probabilities', 'position', 'orientation'):
        np.testing.assert_allclose(getattr(actual, name), getattr(expected, name),
                                   atol=OUTPUT_ATOL, err_msg=name)


def test_a_stream_of_images_gets_the_eager_answers(bundle, compiled):
    """Image after image, in two threads, the graph compiled at construction answers as eager.

    It never compiles again: a recompile would make the first frame pay for the compile.
    """
    eager = Localizer(bundle, device='cpu')
    assert compiled.torch_compile and not eager.torch_compile
    # What runs each frame is the compiled module (counted), not the eager one.
    assert isinstance(compiled._forward, OptimizedModule)
    calls = []
    forward = compiled._forward

    def counted(batch):
        calls.append(batch.shape)
        return forward(batch)
    compiled._forward = counted
    answers = []

    def stream(images):
        answers.extend(compiled.localize(image) for image in images)
    # The node calls from its worker thread; no frame compiles again (the graph compiled at
    # construction serves them all: a recompile would make the first frame pay for it).
    try:
        with torch._dynamo.config.patch(error_on_recompile=True):
            stream(photos())
            worker = threading.Thread(target=stream, args=(photos()[::-1],))
            worker.start()
            worker.join()
    finally:
        compiled._forward = forward
    assert len(calls) == len(answers) == 8
    expected = [eager.localize(image) for image in photos() + photos()[::-1]]
    for actual, reference in zip(answers, expected):
        assert_same_answer(actual, reference)
    # Different images got different answers: the compiled graph reads its input every call.
    assert len({round(float(a.position[0]), 6) for a in answers[:4]}) == 4


def test_a_batch_of_another_size_is_compiled_again_and_answers_alike(bundle, compiled):
    """Batch 1 was compiled at construction; a batch of 3 compiles on first use, same answers."""
    eager = Localizer(bundle, device='cpu')
    for actual, reference in zip(compiled.localize_batch(photos()[:3], batch_size=3),
                                 eager.localize_batch(photos()[:3], batch_size=3)):
        assert_same_answer(actual, reference)


def test_torch_compile_with_cuda_graphs_is_refused(bundle):
    """The CUDA graph would capture the eager model: asking for both is an error, not a guess."""
    with pytest.raises(ValueError, match='torch_compile and cuda_graphs exclude each other'):
        Localizer(bundle, device='cpu', torch_compile=True, cuda_graphs=True)


def test_with_onnxruntime_it_warns_and_compiles_nothing(tmp_path, caplog):
    """The onnxruntime back-end runs the bundle's graph: one warning, nothing compiled."""
    path = tmp_path / 'tiny.safetensors'
    assert export.main(['--checkpoint', str(save_tiny_checkpoint(tmp_path)), '--out', str(path),
                        '--calibration-split', 'none', '--onnx']) == 0
    with caplog.at_level(logging.WARNING, logger='mspr_ros.localizer'):
        localizer = Localizer(load_bundle(path), device='cpu', backend='onnxruntime',
                              torch_compile=True)
    assert not localizer.torch_compile
    assert [r.getMessage() for r in caplog.records if r.name == 'mspr_ros.localizer'] == [
        "torch_compile asked for, but the onnxruntime back-end runs the bundle's graph; "
        'not compiling']


def test_a_compile_that_cannot_run_stops_the_construction(bundle, tmp_path, monkeypatch):
    """No C++ compiler: CompileError with the compiler's complaint, no eager fall-back."""
    # A cache of its own, so that no kernel compiled by another test is reused.
    monkeypatch.setenv('TORCHINDUCTOR_CACHE_DIR', str(tmp_path / 'inductor'))
    torch._dynamo.reset()
    missing = str(tmp_path / 'no-such-c++')
    with inductor_config.patch({'cpp.cxx': (None, missing), 'fx_graph_cache': False}):
        with pytest.raises(CompileError) as raised:
            Localizer(bundle, device='cpu', torch_compile=True)
    assert str(raised.value).startswith('torch.compile could not compile the model: ')
    assert 'no-such-c++' in str(raised.value)   # the compiler's complaint, passed on
    torch._dynamo.reset()


@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason='torch.compile on CUDA (Triton kernels) needs CUDA; this machine has '
                           'none')
def test_on_cuda_the_compiled_model_answers_as_eager(bundle):
    """On a GPU, Triton's kernels answer what the eager model does, image after image."""
    compiled = Localizer(bundle, device='cuda', torch_compile=True)
    eager = Localizer(bundle, device='cuda')
    assert compiled.torch_compile
    for image in photos():
        assert_same_answer(compiled.localize(image), eager.localize(image))
