"""Tests of the weights bundle: exact round trip and one clear BundleError per kind of damage."""
import hashlib
import json
import math
import os
import pickle

import numpy as np
import pytest
import safetensors.torch
import torch

from mspr_ros.bundle import (build_model_from_bundle, bundle_metadata, BundleError,
                             default_covariance, load_bundle, METADATA_KEY, save_bundle,
                             SceneAlignment)
from mspr_ros.estimation.error_correlation import ErrorCorrelation
from mspr_ros.model.config import ModelConfig
from mspr_ros.model.ms_transformer import build_model
from mspr_ros.preprocess import PreprocessingConfig

SCENES = ['hall', 'lab']


@pytest.fixture(scope='module')
def config() -> ModelConfig:
    """Return a tiny two-scene config with random backbone weights."""
    return ModelConfig(num_scenes=2, backbone='efficientnet_lite0', backbone_weights=None,
                       hidden_dim=16, nheads=2, dim_feedforward=16, enc_layers_t=1,
                       dec_layers_t=1, enc_layers_rot=1, dec_layers_rot=1, head_hidden=8)


@pytest.fixture(scope='module')
def model(config):
    """Return a seeded model for ``config``."""
    torch.manual_seed(3)
    return build_model(config).eval()


@pytest.fixture
def bundle_file(tmp_path, model, config):
    """Save a valid bundle and return its path."""
    return save_bundle(tmp_path / 'model.safetensors', model, config, SCENES)


def write_document(path, tensors, document) -> None:
    """Write a safetensors file with a hand-made ``mspr_bundle`` document."""
    safetensors.torch.save_file(tensors, str(path), metadata={METADATA_KEY: json.dumps(document)})


def valid_document(path) -> dict:
    """Return the ``mspr_bundle`` JSON document of a saved bundle."""
    with safetensors.safe_open(str(path), 'pt') as handle:
        return json.loads(handle.metadata()[METADATA_KEY])


def test_round_trip_is_bit_exact(tmp_path, model, config):
    """Every tensor and all metadata survive save/load exactly; the rebuilt model agrees."""
    rotation = np.array([0.1, -0.2, 0.3, 0.9])
    alignment = {'lab': SceneAlignment(translation=(1.5, -2.0, 0.25),
                                       rotation=rotation / np.linalg.norm(rotation), scale=1.25)}
    covariance = {'hall': np.diag([0.04, 0.05, 0.06, 0.001, 0.002, 0.003])}
    preprocessing = PreprocessingConfig(resize=128, crop=112)
    provenance = {'dataset': 'synthetic', 'epochs': 3, 'metrics': {'median_m': 0.5}}
    path = save_bundle(tmp_path / 'rt.safetensors', model, config, SCENES,
                       preprocessing=preprocessing, scene_alignment=alignment,
                       covariance=covariance, provenance=provenance)
    bundle = load_bundle(path)

    original = model.state_dict()
    assert set(bundle.state_dict) == set(original)
    for key, tensor in original.items():
        assert bundle.state_dict[key].dtype == tensor.dtype, key
        assert torch.equal(bundle.state_dict[key], tensor), key
    assert bundle.config == config
    assert bundle.scene_names == SCENES
    assert bundle.preprocessing == preprocessing
    assert {n: a.to_dict() for n, a in bundle.scene_alignment.items()} == {
        'hall': SceneAlignment.identity().to_dict(), 'lab': alignment['lab'].to_dict()}
    assert np.array_equal(bundle.covariance['hall'], covariance['hall'])
    assert np.array_equal(bundle.covariance['lab'], default_covariance())
    assert bundle.provenance == provenance
    assert bundle.path == path
    assert bundle.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert bundle_metadata(bundle) == valid_document(path)
    # A bundle exported without an error correlation (every bundle before issue 25) has none.
    assert bundle.error_correlation == {} and 'error_correlation' not in valid_document(path)

    rebuilt = build_model_from_bundle(bundle)
    assert not rebuilt.training
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected, actual = model(images), rebuilt(images)
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key


def test_error_correlation_round_trip(tmp_path, model, config):
    """Learned correlations survive save/load per scene, infinite lengths included."""
    fitted = ErrorCorrelation(length_m=1.5, angle_rad=0.4, time_s=math.inf, floor=0.2,
                              source='fitted')
    path = save_bundle(tmp_path / 'c.safetensors', model, config, SCENES,
                       error_correlation={'lab': fitted})
    bundle = load_bundle(path)
    assert bundle.error_correlation == {'lab': fitted}  # 'hall' has none: the node's fallback
    assert valid_document(path)['error_correlation'] == {'lab': fitted.to_dict()}
    assert valid_document(path)['error_correlation']['lab']['time_s'] is None
    assert bundle_metadata(bundle) == valid_document(path)
    # The dict form is accepted too (a model re-saved from another bundle's metadata).
    again = save_bundle(tmp_path / 'd.safetensors', model, config, SCENES,
                        error_correlation={'lab': fitted.to_dict()})
    assert load_bundle(again).error_correlation == {'lab': fitted}
    with pytest.raises(ValueError, match=r"error_correlation names unknown scenes \['cellar'\]"):
        save_bundle(tmp_path / 'e.safetensors', model, config, SCENES,
                    error_correlation={'cellar': fitted})


@pytest.mark.parametrize('value, fragment', [
    ({'cellar': ErrorCorrelation.one_frame().to_dict()}, "unknown scenes ['cellar']"),
    ({'lab': {**ErrorCorrelation.one_frame().to_dict(), 'floor': 1.5}},
     "error_correlation of scene 'lab': error correlation floor must be in [0, 1]"),
    ({'lab': {'length_m': 1.0}}, "error_correlation of scene 'lab': error correlation has no"),
    ({'lab': {**ErrorCorrelation.one_frame().to_dict(), 'length_m': -1}}, 'length_m must be'),
    ({'lab': [0.2]}, 'must be a mapping'),
    ([0.2], 'error_correlation must map scene names'),
])
def test_a_tampered_error_correlation_is_a_bundle_error(tmp_path, bundle_file, model,
                                                        value, fragment):
    """Unknown scenes and bad models in the metadata raise BundleError naming the file."""
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    path = tmp_path / 'tampered.safetensors'
    write_document(path, tensors, {**valid_document(bundle_file), 'error_correlation': value})
    with pytest.raises(BundleError) as caught:
        load_bundle(path)
    assert str(path) in str(caught.value) and fragment in str(caught.value)


def test_rebuilding_never_reads_backbone_weights(tmp_path, model, config):
    """A bundle whose config names a weights file that is gone still loads and builds."""
    cfg = ModelConfig.from_dict({**config.to_dict(),
                                 'backbone_weights': str(tmp_path / 'gone.pth')})
    path = save_bundle(tmp_path / 'b.safetensors', model, cfg, SCENES)
    rebuilt = build_model_from_bundle(load_bundle(path))
    assert torch.equal(rebuilt.backbone.stem[0].weight, model.backbone.stem[0].weight)


def test_save_is_atomic_and_overwrites(tmp_path, model, config):
    """Saving twice to one path leaves exactly that file and no temporary files."""
    path = tmp_path / 'same.safetensors'
    save_bundle(path, model, config, SCENES, provenance={'run': 1})
    save_bundle(path, model, config, SCENES, provenance={'run': 2})
    assert os.listdir(tmp_path) == ['same.safetensors']
    assert load_bundle(path).provenance == {'run': 2}


def test_save_rejects_inconsistent_inputs(tmp_path, model, config):
    """save_bundle refuses metadata or models that could not be loaded back."""
    path = tmp_path / 'bad.safetensors'
    cases = [
        (dict(scene_names=['only_one']), 'num_scenes'),
        (dict(scene_names=['a', 'a']), 'unique'),
        (dict(covariance={'cellar': np.eye(6)}), 'unknown scenes'),
        (dict(covariance={'hall': np.triu(np.ones((6, 6)))}), 'not symmetric'),
        (dict(covariance={'hall': -np.eye(6)}), 'positive semi-definite'),
        (dict(scene_alignment={'hall': {'translation': [0, 0, 0],
                                        'rotation_xyzw': [0, 0, 0, 2]}}), 'unit quaternion'),
        (dict(config=ModelConfig.from_dict({**config.to_dict(), 'hidden_dim': 32})),
         'shape'),
    ]
    for overrides, message in cases:
        kwargs = dict(scene_names=SCENES, config=config)
        kwargs.update(overrides)
        extra = {k: v for k, v in kwargs.items() if k not in ('scene_names', 'config')}
        with pytest.raises(ValueError, match=message):
            save_bundle(path, model, kwargs['config'], kwargs['scene_names'], **extra)
    assert not path.exists()


class PayloadThatMustNotRun:
    """Pickled object whose unpickling would create a marker file."""

    def __init__(self, marker: str) -> None:
        """Remember the marker path."""
        self.marker = marker

    def __reduce__(self):
        """Unpickle as ``open(marker, 'w')``: a visible side effect."""
        return (open, (self.marker, 'w'))


def damage_cases(tmp_path, bundle_file, model):
    """Yield ``(label, path, expected message fragment)`` for each kind of bad bundle."""
    good = bundle_file.read_bytes()
    document = valid_document(bundle_file)
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}

    yield 'missing', tmp_path / 'absent.safetensors', 'no such bundle file'
    directory = tmp_path / 'folder.safetensors'
    directory.mkdir()
    yield 'directory', directory, 'is a directory'
    truncated = tmp_path / 'truncated.safetensors'
    truncated.write_bytes(good[:len(good) - 1000])
    yield 'truncated', truncated, 'truncated'
    stub = tmp_path / 'stub.safetensors'
    stub.write_bytes(good[:5])
    yield 'too short', stub, 'truncated or not a safetensors file'
    pickled = tmp_path / 'pickled.safetensors'
    pickled.write_bytes(pickle.dumps({'weights': PayloadThatMustNotRun(str(tmp_path / 'ran'))}))
    yield 'pickle', pickled, 'pickle'
    checkpoint = tmp_path / 'checkpoint.safetensors'
    torch.save({'model': model.state_dict()}, checkpoint)
    yield 'torch.save', checkpoint, 'zip archive'
    corrupt = tmp_path / 'corrupt.safetensors'
    header_length = int.from_bytes(good[:8], 'little')
    corrupt.write_bytes(good[:8] + b'{' + b'!' * (header_length - 1) + good[8 + header_length:])
    yield 'corrupt header', corrupt, 'not valid JSON'
    plain = tmp_path / 'plain.safetensors'
    safetensors.torch.save_file(tensors, str(plain))
    yield 'no metadata', plain, f"no '{METADATA_KEY}' metadata"
    future = tmp_path / 'future.safetensors'
    write_document(future, tensors, {**document, 'format_version': 2})
    yield 'version', future, 'format_version 2'
    three = tmp_path / 'three.safetensors'
    write_document(three, tensors, {**document, 'scene_names': ['a', 'b', 'c']})
    yield 'scene count', three, 'num_scenes'
    wide = tmp_path / 'wide.safetensors'
    write_document(wide, tensors, {**document, 'model_config': {**document['model_config'],
                                                                'head_hidden': 16}})
    yield 'tensor shape', wide, 'shape'
    partial = tmp_path / 'partial.safetensors'
    write_document(partial, {k: v for k, v in tensors.items() if 'regressor_head_t' not in k},
                   document)
    yield 'missing tensors', partial, 'missing'
    unknown_key = tmp_path / 'unknown_key.safetensors'
    write_document(unknown_key, tensors, {**document, 'model_config': {
        **document['model_config'], 'nhead': 8}})
    yield 'config key', unknown_key, 'unknown ModelConfig keys'


def test_each_damage_gives_one_clear_bundle_error(tmp_path, bundle_file, model):
    """Every damaged bundle raises BundleError naming the file and the problem."""
    labels = []
    for label, path, fragment in damage_cases(tmp_path, bundle_file, model):
        with pytest.raises(BundleError) as caught:
            load_bundle(path)
        message = str(caught.value)
        assert path.name in message, (label, message)
        assert fragment in message, (label, message)
        labels.append(label)
    assert len(labels) == 13
    assert not (tmp_path / 'ran').exists(), 'the pickle payload was executed'


@pytest.mark.parametrize('first_bytes', [b'\x80', b'PK'])
def test_a_valid_bundle_whose_header_length_looks_like_another_format_loads(
        tmp_path, bundle_file, first_bytes):
    """A header length whose first bytes read 0x80 (pickle) or 'PK' (zip) is still a bundle.

    The format sniffing must only run when the safetensors framing fails; padding the metadata
    until the little-endian length starts with those bytes guards that order.
    """
    with safetensors.safe_open(str(bundle_file), 'pt') as handle:
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
        metadata = handle.metadata()
    path = tmp_path / 'lookalike.safetensors'
    modulus = 256 ** len(first_bytes)  # the length's low byte(s) must equal first_bytes
    base = int.from_bytes(bundle_file.read_bytes()[:8], 'little')
    start = (int.from_bytes(first_bytes, 'little') - base) % modulus
    for padding in range(start - 16, start + 16):  # safetensors pads the header to 8 bytes
        safetensors.torch.save_file(tensors, str(path),
                                    metadata={**metadata, 'pad': 'x' * max(padding, 0)})
        if path.read_bytes()[:len(first_bytes)] == first_bytes:
            break
    else:
        pytest.fail(f'no padding gave a header length starting with {first_bytes!r}')
    assert load_bundle(path).scene_names == SCENES
