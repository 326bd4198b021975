"""The ONNX Runtime back-end: ``mspr-export --onnx``, the ``inference`` entry, the Localizer.

The graph must give the torch model's outputs (to 1e-4) at batch 1 and at another batch size,
and a bundle that asks for onnxruntime must either run it or fail at load: every test that
expects onnxruntime checks that the session ran and that torch's forward did not.
"""
from dataclasses import replace
import json
import os
from pathlib import Path
import shutil
import subprocess
import sys

import numpy as np
import onnx
from PIL import Image
import pytest
import torch

from mspr_ros.bundle import (bundle_metadata, BundleError, check_inference, load_bundle,
                             save_bundle)
from mspr_ros.localizer import Localizer
from mspr_ros.model.ms_transformer import build_model, MSTransformer
from mspr_ros.onnx_backend import DEFAULT_OPSET, file_sha256, OnnxSession, OUTPUT_NAMES
from mspr_ros.preprocess import preprocess_batch
from mspr_training import export
from mspr_training.checkpoint import CHECKPOINT_FORMAT, save_checkpoint
from mspr_training.config import load_config

REPO = Path(__file__).resolve().parents[1]
SCENES = ['atrium', 'corridor', 'lab']
TOLERANCE = 1e-4


@pytest.fixture(scope='module')
def exported(tmp_path_factory) -> Path:
    """Export a seeded tiny checkpoint (tiny_test.yaml, random init) with ``mspr-export --onnx``.

    Returns the bundle path; ``tiny.onnx`` lies beside it.
    """
    folder = tmp_path_factory.mktemp('onnx_export')
    out = folder / 'tiny.safetensors'
    assert export.main(['--checkpoint', str(save_tiny_checkpoint(folder)), '--out', str(out),
                        '--calibration-split', 'none', '--onnx']) == 0
    return out


def save_tiny_checkpoint(folder: Path) -> Path:
    """Save a seeded checkpoint of tiny_test.yaml's model (random init, no training)."""
    cfg = load_config('tiny_test')
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = build_model(replace(cfg.model, backbone_weights=None))
    return save_checkpoint(folder / 'checkpoint.pt', {
        'format': CHECKPOINT_FORMAT, 'model': model.state_dict(), 'config': cfg.to_dict(),
        'scene_names': SCENES, 'data_fingerprint': 'test', 'feature_cache': False,
        'progress': {'epoch': 0, 'iteration': 0, 'global_step': 0, 'epoch_done': True}})


@pytest.fixture(scope='module')
def torch_bundle(exported, tmp_path_factory) -> Path:
    """Save the same model without an ``inference`` entry (a bundle as before the entry)."""
    bundle = load_bundle(exported)
    model = build_model(replace(bundle.config, backbone_weights=None))
    model.load_state_dict(bundle.state_dict)
    return save_bundle(tmp_path_factory.mktemp('plain') / 'plain.safetensors', model,
                       bundle.config, bundle.scene_names, preprocessing=bundle.preprocessing)


@pytest.fixture(scope='module')
def world_images(tiny_world) -> list:
    """Six rendered frames (two per scene) of the shared tiny world, 96 x 72 RGB."""
    paths = [path for scene in SCENES
             for path in sorted((tiny_world / scene).glob('seq*/frame*.png'))[:2]]
    return [np.asarray(Image.open(path).convert('RGB')) for path in paths]


def forbid_torch_forward(monkeypatch) -> None:
    """Make any torch forward of the model fail, so a silent fall-back cannot pass a test."""
    def refuse(*args, **kwargs):
        raise AssertionError('the torch model ran although the onnxruntime back-end was asked')
    monkeypatch.setattr(MSTransformer, 'forward', refuse)


def copy_export(exported: Path, folder: Path) -> Path:
    """Copy the exported bundle and its graph into ``folder``; return the bundle copy."""
    for path in (exported, exported.with_suffix('.onnx')):
        shutil.copy2(path, folder / path.name)
    return folder / exported.name


def test_export_writes_the_graph_and_the_bundle_asks_for_it(exported):
    graph_path = exported.with_suffix('.onnx')
    bundle = load_bundle(exported)
    assert bundle.inference == {'backend': 'onnxruntime', 'onnx_file': 'tiny.onnx',
                                'opset': DEFAULT_OPSET, 'onnx_sha256': file_sha256(graph_path)}
    assert bundle_metadata(bundle)['inference'] == bundle.inference
    check = bundle.provenance['onnx']
    assert check['checked'] and max(check['max_abs_difference'].values()) < TOLERANCE
    graph = onnx.load(str(graph_path))
    assert [op.version for op in graph.opset_import if op.domain in ('', 'ai.onnx')] \
        == [DEFAULT_OPSET]
    dims = [[d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
            for value in graph.graph.input]
    assert dims == [['batch', 3, 64, 64]]  # tiny_test.yaml crops 64 x 64
    assert [value.name for value in graph.graph.output] == list(OUTPUT_NAMES)
    assert all(value.type.tensor_type.shape.dim[0].dim_param == 'batch'
               for value in graph.graph.output)


def test_a_graph_that_disagrees_with_torch_is_not_exported(tmp_path, monkeypatch, capsys):
    original = OnnxSession.run

    def shifted(self, images):
        outputs = original(self, images)
        return {**outputs, 'position': outputs['position'] + 0.01}
    monkeypatch.setattr(OnnxSession, 'run', shifted)
    out = tmp_path / 'tiny.safetensors'
    assert export.main(['--checkpoint', str(save_tiny_checkpoint(tmp_path)), '--out', str(out),
                        '--calibration-split', 'none', '--onnx']) == 2
    assert 'differs from the torch model' in capsys.readouterr().err
    assert sorted(path.name for path in tmp_path.iterdir()) == ['checkpoint.pt']


@pytest.mark.parametrize('batch_size', [1, 3])
def test_onnxruntime_gives_the_torch_outputs(exported, world_images, batch_size, monkeypatch):
    reference = Localizer.from_file(exported, device='cpu', backend='torch')
    expected = reference.localize_batch(world_images, batch_size=batch_size)
    batch = preprocess_batch(world_images[:batch_size], reference.bundle.preprocessing)
    with torch.inference_mode():
        raw_expected = reference.model(batch)

    localizer = Localizer.from_file(exported, device='cpu')  # 'auto': what the bundle asks
    assert localizer.backend == 'onnxruntime' and reference.backend == 'torch'
    forbid_torch_forward(monkeypatch)
    results = localizer.localize_batch(world_images, batch_size=batch_size)
    assert localizer.onnx_session.runs == -(-len(world_images) // batch_size)
    assert localizer.timings.inference_ms > 0 and localizer.timings.preprocess_ms > 0
    raw = localizer.onnx_session.run(batch.numpy())
    for name in ('position', 'orientation', 'scene_log_probs'):
        np.testing.assert_allclose(raw[name], raw_expected[name].numpy(), atol=TOLERANCE,
                                   rtol=0, err_msg=name)
    np.testing.assert_array_equal(raw['scene'], raw_expected['scene'].numpy())
    for got, want in zip(results, expected, strict=True):
        assert got.scene_index == want.scene_index and got.scene_name == want.scene_name
        for field in ('position', 'orientation', 'scene_probabilities', 'covariance'):
            np.testing.assert_allclose(getattr(got, field), getattr(want, field),
                                       atol=TOLERANCE, rtol=0, err_msg=field)


def test_the_backend_follows_the_bundle_unless_chosen(exported, torch_bundle, monkeypatch):
    plain = Localizer.from_file(torch_bundle, device='cpu')
    assert plain.backend == 'torch' and plain.onnx_session is None
    assert load_bundle(torch_bundle).inference is None
    assert 'inference' not in bundle_metadata(load_bundle(torch_bundle))
    chosen = Localizer.from_file(exported, device='cpu', backend='torch')
    assert chosen.backend == 'torch' and chosen.onnx_session is None
    with pytest.raises(BundleError, match='mspr-export --onnx') as error:
        Localizer.from_file(torch_bundle, device='cpu', backend='onnxruntime')
    assert str(torch_bundle) in str(error.value)
    with pytest.raises(ValueError, match='tensorrt'):
        Localizer.from_file(exported, device='cpu', backend='tensorrt')
    localizer = Localizer.from_file(exported, device='cpu', backend='onnxruntime',
                                    precision='bf16', cuda_graphs=True)
    # Reduced precision and CUDA graphs are torch's: onnxruntime runs its fp32 graph eagerly.
    assert localizer.precision == 'fp32' and not localizer.cuda_graphs
    forbid_torch_forward(monkeypatch)
    localizer.warmup(1)
    assert localizer.onnx_session.runs == 1 and localizer.device == torch.device('cpu')
    with pytest.raises(RuntimeError, match='onnxruntime'):
        localizer.run_model(torch.zeros(1, 3, 224, 224))


@pytest.mark.parametrize('damage', ['missing', 'altered'])
def test_a_missing_or_altered_graph_fails_at_load(exported, tmp_path, damage):
    bundle_path = copy_export(exported, tmp_path)
    graph_path = bundle_path.with_suffix('.onnx')
    if damage == 'missing':
        graph_path.unlink()
    else:
        graph_path.write_bytes(graph_path.read_bytes() + b'\0')
    for backend in ('auto', 'onnxruntime'):
        with pytest.raises(BundleError, match='missing' if damage == 'missing' else 'SHA-256') \
                as error:
            Localizer.from_file(bundle_path, device='cpu', backend=backend)
        assert str(graph_path) in str(error.value) and str(bundle_path) in str(error.value)
    # The tensors are still there: torch, chosen explicitly, does not need the graph.
    assert Localizer.from_file(bundle_path, device='cpu', backend='torch').backend == 'torch'


def test_without_onnxruntime_the_bundle_fails_at_load(exported, monkeypatch):
    monkeypatch.setitem(sys.modules, 'onnxruntime', None)  # import onnxruntime raises
    with pytest.raises(BundleError, match="package 'onnxruntime' is not installed") as error:
        Localizer.from_file(exported, device='cpu')
    assert str(exported) in str(error.value)


def test_a_graph_for_another_crop_size_is_refused(exported, tmp_path):
    bundle = load_bundle(exported)
    model = build_model(replace(bundle.config, backbone_weights=None))
    model.load_state_dict(bundle.state_dict)
    other = save_bundle(tmp_path / 'other.safetensors', model, bundle.config, SCENES,
                        preprocessing=replace(bundle.preprocessing, crop=48),
                        inference=bundle.inference)
    shutil.copy2(exported.with_suffix('.onnx'), tmp_path / 'tiny.onnx')
    with pytest.raises(BundleError, match=r'N x \[3, 48, 48\]'):
        Localizer.from_file(other, device='cpu')


@pytest.mark.parametrize('entry, problem', [
    ({'backend': 'tensorrt'}, 'backend must be one of'),
    ({'onnx_file': 'm.onnx'}, 'backend must be one of'),
    ({'backend': 'torch', 'opset': 17}, 'takes the keys'),
    ({'backend': 'onnxruntime', 'onnx_file': 'm.onnx', 'opset': 17}, 'takes the keys'),
    ({'backend': 'onnxruntime', 'onnx_file': '../m.onnx', 'opset': 17, 'onnx_sha256': 'a' * 64},
     'file name beside the bundle'),
    ({'backend': 'onnxruntime', 'onnx_file': 'm.onnx', 'opset': True, 'onnx_sha256': 'a' * 64},
     'opset'),
    ({'backend': 'onnxruntime', 'onnx_file': 'm.onnx', 'opset': 17, 'onnx_sha256': 'A' * 64},
     'onnx_sha256'),
    (['onnxruntime'], 'JSON object'),
])
def test_inference_entries_are_validated(exported, tmp_path, entry, problem):
    with pytest.raises(ValueError, match=problem):
        check_inference(entry)
    # The same entry in a file is a BundleError naming the file.
    bundle_path = copy_export(exported, tmp_path)
    header_length = int.from_bytes(bundle_path.read_bytes()[:8], 'little')
    data = bundle_path.read_bytes()
    header = json.loads(data[8:8 + header_length])
    document = json.loads(header['__metadata__']['mspr_bundle'])
    document['inference'] = entry
    header['__metadata__']['mspr_bundle'] = json.dumps(document)
    raw = json.dumps(header).encode()
    raw += b' ' * (-len(raw) % 8)
    bundle_path.write_bytes(len(raw).to_bytes(8, 'little') + raw + data[8 + header_length:])
    with pytest.raises(BundleError, match=problem) as error:
        load_bundle(bundle_path)
    assert str(bundle_path) in str(error.value)


def test_the_core_imports_without_onnxruntime():
    code = ('import sys; sys.modules["onnxruntime"] = None\n'
            'import mspr_ros.localizer, mspr_ros.onnx_backend\n'
            'print("imported")')
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0 and 'imported' in result.stdout, result.stderr


def test_onnx_latency_smoke(tmp_path):
    """``benchmarks/onnx_latency.py --smoke`` runs and writes consistent JSON (never speed)."""
    out = tmp_path / 'onnx_latency.json'
    env = dict(os.environ, OMP_NUM_THREADS='1', MSPR_BENCHMARK_WORK=str(tmp_path / 'work'))
    result = subprocess.run([sys.executable, str(REPO / 'benchmarks' / 'onnx_latency.py'),
                             '--smoke', '--threads', '1', '--out', str(out)], cwd=REPO,
                            env=env, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    document = json.loads(out.read_text())
    assert document['benchmark'] == 'onnx_latency' and document['mode'] == 'smoke'
    assert document['settings']['threads'] == 1 and document['settings']['sizes'] == ['tiny']
    tiny = document['results']['tiny']
    calls = document['settings']['rounds'] * document['settings']['calls_per_round']
    for backend in ('torch_ms', 'onnxruntime_ms'):
        summary = tiny[backend]
        assert summary['count'] == calls
        assert 0 < summary['min'] <= summary['p50'] <= summary['p95'] <= summary['max']
    assert tiny['ratio_p50'] == pytest.approx(tiny['onnxruntime_ms']['p50']
                                              / tiny['torch_ms']['p50'])
    assert tiny['goal_met'] == (tiny['ratio_p50'] <= tiny['goal_ratio'])
    assert max(tiny['max_abs_difference'].values()) < TOLERANCE
    assert tiny['providers'] == ['CPUExecutionProvider']
