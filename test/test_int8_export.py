"""mspr-export --onnx --quantize int8: the static int8 graph, checked, recorded, run as asked."""
import json

from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseWithCovarianceStamped
import numpy as np
import onnx
import pytest
from sensor_msgs.msg import Image

from mspr_ros.bundle import BundleError, load_bundle
from mspr_ros.localizer import Localizer
from mspr_ros.onnx_backend import onnx_path_for
from mspr_ros.ros.conversions import rgb_to_image_msg, stamp_to_ns
from mspr_training.config import load_config
from mspr_training.data import load_rgb
from mspr_training.datasets import read_split
from mspr_training.export import main as export_main
from mspr_training.inference_graph import int8_path_for
from mspr_training.quantize import (CALIBRATION_PERCENTILE, float_nodes, INT8_TOLERANCE,
                                    SCENE_TIE_MARGIN)
from mspr_training.train import train
from ros_harness import diagnostic_values, domain_id, NodeProcess, own_status
from ros_harness import RELIABLE_LATCHED, RosClient, small_photos, stop_all


@pytest.fixture(scope='module')
def exported(tiny_world, tmp_path_factory, isolated_torch):
    """Train a one-epoch tiny run and export it with its float and int8 graphs."""
    out = tmp_path_factory.mktemp('int8')
    train(load_config('tiny_test', ['schedule.epochs=1']), out / 'run', tiny_world)
    bundle = out / 'model.safetensors'
    assert export_main(['--run', str(out / 'run'), '--out', str(bundle), '--calibration-split',
                        'none', '--device', 'cpu', '--onnx', '--quantize', 'int8']) == 0
    return bundle


def test_the_bundle_runs_the_checked_int8_graph_and_says_so(exported, tiny_world):
    bundle = load_bundle(exported)
    entry = bundle.inference
    assert entry['onnx_file'] == int8_path_for(exported).name
    assert onnx_path_for(exported).is_file()  # the float graph is kept beside it
    quantization = bundle.provenance['quantization']
    assert entry['quantization']['type'] == 'int8' and entry['quantization']['format'] == 'QDQ'
    # The pose heads' last layers stay float, and the bundle says which nodes did.
    assert any('regressor_head_t' in name for name in quantization['float_nodes'])
    assert any('regressor_head_rot' in name for name in quantization['float_nodes'])
    assert any('backbone' in name for name in quantization['float_nodes'])
    # ... and they really are float in the graph: no QDQ pair feeds them.
    graph = onnx.load(str(int8_path_for(exported)))
    dequantized = {n.output[0] for n in graph.graph.node if n.op_type == 'DequantizeLinear'}
    for node in graph.graph.node:
        if node.name in quantization['float_nodes']:
            assert not set(node.input) & dequantized, node.name
    assert len(dequantized) > 10  # the rest is quantized
    assert quantization['calibration_source'] == 'training split'
    assert quantization['activations'] == (
        f'uint8, ranges at the {CALIBRATION_PERCENTILE:g}th percentile')
    assert 'reduce_range' in quantization['cpu'] and quantization['cpu']['kernels']
    check = quantization['check']
    assert check['images'] >= 1 and check['scene_agreement'] >= 0.9
    int8 = Localizer.from_file(exported, device='cpu')
    assert int8.backend == 'onnxruntime' and int8.precision == 'int8'
    assert int8.onnx_session.path == int8_path_for(exported)
    # Outputs within the stated tolerance of the float model on fixed training images: the
    # same pose where both select the same scene, a near tie where they do not.
    reference = Localizer.from_file(exported, device='cpu', backend='torch')
    images = [load_rgb(s) for s in read_split(load_config('tiny_test').data, 'train',
                                              tiny_world)['lab'][:4]]
    agreed = 0
    for got, want in zip(int8.localize_batch(images, batch_size=1),
                         reference.localize_batch(images, batch_size=1)):
        if got.scene_index == want.scene_index:
            agreed += 1
            scale = max(1.0, float(np.abs(want.position).max()))
            assert np.abs(got.position - want.position).max() <= 3 * INT8_TOLERANCE * scale
        else:
            top = np.sort(np.log(want.scene_probabilities))[::-1]
            assert top[0] - top[1] <= SCENE_TIE_MARGIN
    assert agreed >= 1
    assert int8.onnx_session.runs == 4


def test_a_tampered_or_missing_int8_graph_stops_loading_naming_it(exported, tmp_path):
    copy = tmp_path / 'model.safetensors'
    copy.write_bytes(exported.read_bytes())
    with pytest.raises(BundleError, match=r'model\.int8\.onnx is missing'):
        Localizer.from_file(copy, device='cpu')
    graph = int8_path_for(exported).read_bytes()
    int8_path_for(copy).write_bytes(graph[:-16] + bytes(16))
    with pytest.raises(BundleError, match=r'model\.int8\.onnx has SHA-256'):
        Localizer.from_file(copy, device='cpu')


def test_float_nodes_are_the_heads_last_layers_and_what_the_user_names():
    class Node:
        def __init__(self, name, op_type):
            self.name, self.op_type, self.input = name, op_type, []

    class Graph:
        node = [Node('/model/backbone/stem/Conv', 'Conv'),
                Node('/model/backbone/dw/Conv', 'Conv'),
                Node('/model/backbone/pw/Conv', 'Conv'),
                Node('/model/regressor_head_t/regressor_head_t.0/Gemm', 'Gemm'),
                Node('/model/regressor_head_t/regressor_head_t.2/Gemm', 'Gemm'),
                Node('/model/regressor_head_rot/regressor_head_rot.0/Gemm', 'Gemm'),
                Node('/model/regressor_head_rot/regressor_head_rot.2/Gemm', 'Gemm'),
                Node('/model/transformer_t/encoder/layers.0/self_attn/MatMul', 'MatMul')]

        initializer = [Node('w', 'Initializer')]
        node[-1].input = ['x', 'w']  # a weight product: quantized
        node.append(Node('/model/transformer_t/encoder/layers.0/self_attn/MatMul_1', 'MatMul'))
        node[-1].input = ['q', 'k']  # two activations: float

    class Model:
        graph = Graph()
    # The heads' last layers, the image's first two convolutions and products of two
    # activations; the rest is quantized.
    assert float_nodes(Model()) == ['/model/backbone/dw/Conv', '/model/backbone/stem/Conv',
                                    '/model/regressor_head_rot/regressor_head_rot.2/Gemm',
                                    '/model/regressor_head_t/regressor_head_t.2/Gemm',
                                    '/model/transformer_t/encoder/layers.0/self_attn/MatMul_1']
    assert '/model/transformer_t/encoder/layers.0/self_attn/MatMul' in float_nodes(
        Model(), ['*/self_attn/*'])


def test_quantize_without_onnx_is_refused(exported, capsys, tmp_path):
    run = exported.parent / 'run'
    assert export_main(['--run', str(run), '--out', str(tmp_path / 'b.safetensors'),
                        '--calibration-split', 'none', '--quantize', 'int8']) == 2
    assert '--quantize needs --onnx' in capsys.readouterr().err
    assert json.loads(json.dumps(load_bundle(exported).inference))  # JSON-clean entry


@pytest.mark.ros
def test_the_node_answers_with_the_int8_bundle_over_dds(exported, tmp_path):
    domain = domain_id(15)
    client = RosClient(domain)
    node = NodeProcess(domain, tmp_path / 'int8.log', name='int8', params={
        'weights': str(exported), 'min_scene_confidence': 0.0, 'odom_frame_id': '',
        'base_frame_id': 'camera', 'max_image_age': 30.0, 'diagnostics_period': 0.2})
    try:
        poses = client.subscribe(PoseWithCovarianceStamped, '/int8/pose', RELIABLE_LATCHED)
        diagnostics = client.subscribe(DiagnosticArray, '/diagnostics', 20)
        images = client.publisher(Image, '/image', 5)
        node.wait_active()
        client.wait_for_subscribers(images)
        stamp = client.now_ns()
        images.publish(rgb_to_image_msg(small_photos()['coffee'], 'rgb8', stamp, 'camera'))
        poses.wait_for(lambda m: stamp_to_ns(m.header.stamp) == stamp, 20.0, 'a pose')
        status = own_status(diagnostics.wait_for(
            lambda m: own_status(m, 'int8') is not None, 10.0, 'diagnostics'), 'int8')
        assert diagnostic_values(status)['precision'] == 'int8'
    finally:
        client.close()
        stop_all([node])
