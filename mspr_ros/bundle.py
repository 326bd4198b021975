"""The deployment weights bundle: one ``.safetensors`` file that carries its own metadata.

The file holds the model state dict and, under the safetensors header metadata key
``mspr_bundle``, a JSON document::

    format_version   1
    model_config     ModelConfig.to_dict()
    scene_names      scene names in index order
    preprocessing    {resize, crop, mean, std}
    scene_alignment  {scene: {translation [3], rotation_xyzw [4], scale}}  (T_map_scene)
    covariance       {scene: 6 x 6 nested list}  (x y z roll pitch yaw; m^2 and rad^2)
    error_correlation  optional: {scene: ErrorCorrelation.to_dict()} for the scenes that have
                     one (mspr_ros.estimation.error_correlation: how alike two frames' errors are)
    training_camera  optional: {scene: CameraModel.to_dict()} for the scenes whose camera is
                     known: the pinhole the network saw, at the crop size it receives
                     (mspr_ros.camera; absent in bundles exported before it was recorded)
    provenance       free-form JSON object
    inference        optional: the back-end the bundle asks for (absent: torch), see
                     check_inference; the tensors are always there, so torch stays possible

Loading never unpickles anything; every problem raises :class:`BundleError` naming the file.
"""
from dataclasses import dataclass, field, replace
import functools
import hashlib
import json
import math
import os
from pathlib import Path
import re
from typing import Any, Mapping, Sequence

import numpy as np
import safetensors.torch
import torch
from torch import nn

from mspr_ros.camera.model import CameraModel
from mspr_ros.estimation.error_correlation import ErrorCorrelation
from mspr_ros.geometry.transforms import SceneAlignment
from mspr_ros.model.config import ModelConfig
from mspr_ros.model.ms_transformer import build_model, MSTransformer
from mspr_ros.preprocess import PreprocessingConfig
from mspr_ros.runtime.atomic_file import atomic_write

FORMAT_VERSION = 1
METADATA_KEY = 'mspr_bundle'
DEFAULT_POSITION_VARIANCE = 1.0  # m^2
DEFAULT_ORIENTATION_VARIANCE = math.radians(10.0) ** 2  # rad^2
_HEADER_LENGTH_BYTES = 8
QUANTIZATIONS = ('int8',)
INFERENCE_KEYS = {'torch': {'backend'},
                  'onnxruntime': {'backend', 'onnx_file', 'opset', 'onnx_sha256'}}


class BundleError(Exception):
    """A weights bundle is missing, unreadable or inconsistent; the message names the file."""


@dataclass
class Bundle:
    """A loaded bundle: metadata plus the CPU state dict of the model."""

    config: ModelConfig
    scene_names: list[str]
    preprocessing: PreprocessingConfig
    scene_alignment: dict[str, SceneAlignment]
    covariance: dict[str, np.ndarray]
    provenance: dict[str, Any]
    state_dict: dict[str, torch.Tensor] = field(repr=False)
    path: Path | None = None
    sha256: str = ''
    inference: dict[str, Any] | None = None  # the checked entry; None: the bundle asks for torch
    # Scenes with a learned error correlation; empty for bundles exported without one.
    error_correlation: dict[str, ErrorCorrelation] = field(default_factory=dict)
    # Scenes whose training camera is known (the network's input pinhole); empty for bundles
    # exported before it was recorded, or trained on data that does not say its camera.
    training_camera: dict[str, CameraModel] = field(default_factory=dict)


def _finite_floats(values: Any, length: int, name: str) -> tuple[float, ...]:
    """Return ``values`` as a tuple of ``length`` finite floats or raise ValueError."""
    try:
        floats = tuple(float(v) for v in values)
    except (TypeError, ValueError) as error:
        raise ValueError(f'{name} must be {length} numbers, got {values!r}') from error
    if len(floats) != length or not all(math.isfinite(v) for v in floats):
        raise ValueError(f'{name} must be {length} finite numbers, got {values!r}')
    return floats


def default_covariance() -> np.ndarray:
    """Return the uncalibrated 6x6 covariance: 1 m^2 position, (10 deg)^2 orientation."""
    return np.diag([DEFAULT_POSITION_VARIANCE] * 3 + [DEFAULT_ORIENTATION_VARIANCE] * 3)


def _check_covariance(value: Any, scene: str) -> np.ndarray:
    """Return ``value`` as a symmetric positive semi-definite 6x6 float64 array."""
    try:
        matrix = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f'covariance of scene {scene!r} is not numeric') from error
    if matrix.shape != (6, 6) or not np.isfinite(matrix).all():
        raise ValueError(f'covariance of scene {scene!r} must be a finite 6x6 matrix, '
                         f'got shape {matrix.shape}')
    if not np.allclose(matrix, matrix.T, rtol=1e-9, atol=1e-12):
        raise ValueError(f'covariance of scene {scene!r} is not symmetric')
    if np.linalg.eigvalsh(matrix).min() < -1e-9 * max(1.0, np.abs(matrix).max()):
        raise ValueError(f'covariance of scene {scene!r} is not positive semi-definite')
    return matrix


def _check_scene_names(scene_names: Any, config: ModelConfig) -> list[str]:
    """Return the names as a list; they must be unique non-empty strings, one per scene."""
    if isinstance(scene_names, str) or not isinstance(scene_names, Sequence):
        raise ValueError(f'scene_names must be a list of strings, got {scene_names!r}')
    names = list(scene_names)
    if not all(isinstance(n, str) and n for n in names):
        raise ValueError(f'scene_names must be non-empty strings, got {names!r}')
    if len(set(names)) != len(names):
        raise ValueError(f'scene_names must be unique, got {names!r}')
    if len(names) != config.num_scenes:
        raise ValueError(f'{len(names)} scene names {names} but model_config.num_scenes is '
                         f'{config.num_scenes}')
    return names


def _per_scene(values: Mapping[str, Any] | None, names: list[str], what: str,
               convert, default=None) -> dict:
    """Return ``{scene: convert(value)}`` per scene; absent: ``default()``, or none if None."""
    values = {} if values is None else values
    if not isinstance(values, Mapping):
        raise ValueError(f'{what} must map scene names to values, got {type(values).__name__}')
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ValueError(f'{what} names unknown scenes {unknown}; scenes are {names}')
    return {name: convert(values[name], name) if name in values else default()
            for name in names if name in values or default is not None}


def _to_alignment(value: Any, scene: str) -> SceneAlignment:
    """Accept a SceneAlignment or its dict form for ``scene``.

    The stored quaternion must already be unit length: a non-unit one in a file means the writer
    was wrong, so it is refused rather than silently normalised.
    """
    if isinstance(value, SceneAlignment):
        return value
    try:
        rotation = _finite_floats(value['rotation_xyzw'], 4, 'rotation_xyzw') \
            if isinstance(value, Mapping) and 'rotation_xyzw' in value else None
        if rotation is not None and abs(math.sqrt(sum(v * v for v in rotation)) - 1.0) > 1e-6:
            raise ValueError(f'rotation_xyzw must be a unit quaternion, got {rotation}')
        return SceneAlignment.from_dict(value, context=f'scene_alignment of scene {scene!r}')
    except (TypeError, ValueError) as error:
        raise ValueError(f'scene_alignment of scene {scene!r}: {error}') from error


def _to_correlation(value: Any, scene: str) -> ErrorCorrelation:
    """Accept an ErrorCorrelation or its dict form for ``scene``."""
    try:
        return value if isinstance(value, ErrorCorrelation) else ErrorCorrelation.from_dict(value)
    except (TypeError, ValueError) as error:
        raise ValueError(f'error_correlation of scene {scene!r}: {error}') from error


def _training_camera_checker(crop: int):
    """Return the converter of one scene's training camera: a pinhole at the crop size."""
    def convert(value: Any, scene: str) -> CameraModel:
        try:
            camera = value if isinstance(value, CameraModel) else CameraModel.from_dict(value)
        except (TypeError, ValueError) as error:
            raise ValueError(f'training_camera of scene {scene!r}: {error}') from error
        if not camera.is_pinhole or (camera.width, camera.height) != (crop, crop):
            raise ValueError(f'training_camera of scene {scene!r} must be a pinhole of the '
                             f'{crop} x {crop} network input, got {camera.distortion_model} '
                             f'{camera.width} x {camera.height}')
        return camera
    return convert


def check_inference(value: Any) -> dict[str, Any]:
    """Return a bundle's ``inference`` entry, validated (ValueError names the problem).

    ``{'backend': 'torch'}`` or ``{'backend': 'onnxruntime', 'onnx_file': NAME, 'opset': N,
    'onnx_sha256': HEX}``: the ONNX graph is the file NAME beside the bundle (a bare name),
    exported with opset N; the loader checks its SHA-256. An onnxruntime entry may add
    ``quantization`` (``{'type': 'int8', ...}``: the graph is a static int8 one,
    ``mspr_training.quantize``).
    """
    if not isinstance(value, Mapping):
        raise ValueError(f'inference must be a JSON object, got {type(value).__name__}')
    entry, backend = dict(value), value.get('backend')
    if not isinstance(backend, str) or backend not in INFERENCE_KEYS:
        raise ValueError(f'inference backend must be one of {sorted(INFERENCE_KEYS)}, got '
                         f'{backend!r}')
    optional = {'quantization'} if backend == 'onnxruntime' else set()
    if not INFERENCE_KEYS[backend] <= set(entry) <= INFERENCE_KEYS[backend] | optional:
        raise ValueError(f'inference backend {backend} takes the keys '
                         f'{sorted(INFERENCE_KEYS[backend])} (optionally {sorted(optional)}), '
                         f'got {sorted(entry)}')
    quantization = entry.get('quantization')
    if quantization is not None and (not isinstance(quantization, Mapping)
                                     or quantization.get('type') not in QUANTIZATIONS):
        raise ValueError(f'inference quantization must be an object whose type is one of '
                         f'{QUANTIZATIONS}, got {quantization!r}')
    if backend == 'onnxruntime':
        name, opset, digest = entry['onnx_file'], entry['opset'], entry['onnx_sha256']
        if not isinstance(name, str) or name in ('', '.', '..') or Path(name).name != name \
                or '\\' in name:
            raise ValueError(f'inference onnx_file must be a file name beside the bundle, got '
                             f'{name!r}')
        if isinstance(opset, bool) or not isinstance(opset, int) or opset < 1:
            raise ValueError(f'inference opset must be a positive integer, got {opset!r}')
        if not isinstance(digest, str) or not re.fullmatch('[0-9a-f]{64}', digest):
            raise ValueError(f'inference onnx_sha256 must be 64 lower-case hex digits, got '
                             f'{digest!r}')
    return entry


@functools.lru_cache(maxsize=8)
def _expected_shapes(config_json: str) -> dict[str, tuple[int, ...]]:
    """Return the state-dict shapes of the model a config describes (built on 'meta')."""
    cfg = replace(ModelConfig.from_dict(json.loads(config_json)), backbone_weights=None)
    with torch.device('meta'):
        model = build_model(cfg)
    return {key: tuple(tensor.shape) for key, tensor in model.state_dict().items()}


def _check_tensors(tensors: Mapping[str, torch.Tensor], config: ModelConfig) -> None:
    """Raise ValueError unless the tensor names and shapes are those of ``config``'s model."""
    expected = _expected_shapes(json.dumps(config.to_dict(), sort_keys=True))
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise ValueError(f'tensors do not match model_config: {len(missing)} missing '
                         f'(e.g. {missing[:3]}), {len(unexpected)} unexpected '
                         f'(e.g. {unexpected[:3]})')
    for key, shape in expected.items():
        if tuple(tensors[key].shape) != shape:
            raise ValueError(f'tensor {key} has shape {tuple(tensors[key].shape)} but '
                             f'model_config needs {shape}')


def save_bundle(path: str | os.PathLike, model: nn.Module, config: ModelConfig,
                scene_names: Sequence[str], *,
                preprocessing: PreprocessingConfig | Mapping[str, Any] | None = None,
                scene_alignment: Mapping[str, SceneAlignment | Mapping] | None = None,
                covariance: Mapping[str, Any] | None = None,
                provenance: Mapping[str, Any] | None = None,
                inference: Mapping[str, Any] | None = None,
                error_correlation: Mapping[str, ErrorCorrelation] | None = None,
                training_camera: Mapping[str, CameraModel | Mapping] | None = None) -> Path:
    """Write ``model`` and its metadata atomically to ``path`` (a ``.safetensors`` file).

    Scenes missing from ``scene_alignment``/``covariance`` get the identity alignment and
    :func:`default_covariance`. ``inference`` (:func:`check_inference`) and
    ``error_correlation`` and ``training_camera`` (scenes without one are left out) are
    written only when given. Returns the path written.

    Raises:
        ValueError: inconsistent metadata, or a model that does not match ``config``.
    """
    path = Path(path)
    names = _check_scene_names(scene_names, config)
    if preprocessing is None:
        preprocessing = PreprocessingConfig()
    elif not isinstance(preprocessing, PreprocessingConfig):
        preprocessing = PreprocessingConfig.from_dict(preprocessing)
    alignments = _per_scene(scene_alignment, names, 'scene_alignment', _to_alignment,
                            SceneAlignment.identity)
    covariances = _per_scene(covariance, names, 'covariance', _check_covariance,
                             default_covariance)
    correlations = _per_scene(error_correlation, names, 'error_correlation', _to_correlation)
    cameras = _per_scene(training_camera, names, 'training_camera',
                         _training_camera_checker(preprocessing.crop))
    tensors = {k: v.detach().to('cpu').contiguous() for k, v in model.state_dict().items()}
    _check_tensors(tensors, config)
    document = _document(config, names, preprocessing, alignments, covariances, provenance,
                         None if inference is None else check_inference(inference),
                         correlations, cameras)
    try:
        metadata = {METADATA_KEY: json.dumps(document, allow_nan=False)}
    except (TypeError, ValueError) as error:
        raise ValueError(f'bundle metadata is not JSON-serialisable: {error}') from error
    payload = safetensors.torch.save(tensors, metadata=metadata)
    # Readers (a node being restarted) never see a half-written bundle.
    with atomic_write(path) as handle:
        handle.write(payload)
    return path


def _read_file(path: Path) -> bytes:
    """Return the file's bytes or raise BundleError for missing files and directories."""
    if path.is_dir():
        raise BundleError(f'{path}: is a directory, expected a .safetensors bundle file')
    if not path.exists():
        raise BundleError(f'{path}: no such bundle file')
    try:
        return path.read_bytes()
    except OSError as error:
        raise BundleError(f'{path}: cannot read bundle: {error}') from error


def _has_safetensors_framing(data: bytes) -> bool:
    """Whether ``data`` starts with a plausible header length followed by a JSON object."""
    if len(data) <= _HEADER_LENGTH_BYTES:
        return False
    header_length = int.from_bytes(data[:_HEADER_LENGTH_BYTES], 'little')
    return (0 < header_length <= len(data) - _HEADER_LENGTH_BYTES
            and data[_HEADER_LENGTH_BYTES:_HEADER_LENGTH_BYTES + 1] == b'{')


def _parse_header(data: bytes, path: Path) -> dict[str, Any]:
    """Validate the safetensors framing of ``data`` and return its JSON header."""
    # Sniff other formats only when the safetensors framing fails: a valid header length can
    # begin with the bytes 0x80 or 'PK' (e.g. a 640- or 19280-byte header).
    if not _has_safetensors_framing(data):
        if data[:2] == b'PK':
            raise BundleError(f'{path}: is a zip archive (e.g. a torch.save checkpoint), not a '
                              'safetensors bundle; it was not unpickled')
        if data[:1] == b'\x80':
            raise BundleError(f'{path}: is a Python pickle, not a safetensors bundle; it was '
                              'not unpickled')
    if len(data) < _HEADER_LENGTH_BYTES:
        raise BundleError(f'{path}: only {len(data)} bytes: truncated or not a safetensors file')
    header_length = int.from_bytes(data[:_HEADER_LENGTH_BYTES], 'little')
    if header_length > len(data) - _HEADER_LENGTH_BYTES:
        raise BundleError(f'{path}: header length {header_length} exceeds the file size '
                          f'{len(data)}: truncated or not a safetensors file')
    raw_header = data[_HEADER_LENGTH_BYTES:_HEADER_LENGTH_BYTES + header_length]
    try:
        header = json.loads(raw_header)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BundleError(f'{path}: safetensors header is not valid JSON ({error}): corrupt '
                          'or not a safetensors file') from error
    if not isinstance(header, dict):
        raise BundleError(f'{path}: safetensors header is not a JSON object')
    data_end = 0
    for name, entry in header.items():
        if name == '__metadata__':
            continue
        try:
            data_end = max(data_end, int(entry['data_offsets'][1]))
        except (TypeError, KeyError, IndexError, ValueError) as error:
            raise BundleError(f'{path}: header entry {name!r} has no valid data_offsets') \
                from error
    available = len(data) - _HEADER_LENGTH_BYTES - header_length
    if data_end > available:
        raise BundleError(f'{path}: truncated: tensor data needs {data_end} bytes after the '
                          f'header but only {available} are present')
    return header


def _parse_document(header: Mapping[str, Any], path: Path) -> dict[str, Any]:
    """Return the ``mspr_bundle`` JSON document stored in the header metadata."""
    metadata = header.get('__metadata__') or {}
    if METADATA_KEY not in metadata:
        raise BundleError(f"{path}: safetensors file has no '{METADATA_KEY}' metadata; it is "
                          'not an mspr_ros weights bundle')
    try:
        document = json.loads(metadata[METADATA_KEY])
    except (TypeError, json.JSONDecodeError) as error:
        raise BundleError(f"{path}: '{METADATA_KEY}' metadata is not valid JSON: {error}") \
            from error
    if not isinstance(document, dict):
        raise BundleError(f"{path}: '{METADATA_KEY}' metadata is not a JSON object")
    version = document.get('format_version')
    if version != FORMAT_VERSION:
        raise BundleError(f'{path}: unsupported bundle format_version {version!r} (this '
                          f'mspr_ros reads version {FORMAT_VERSION})')
    required = ('model_config', 'scene_names', 'preprocessing', 'scene_alignment', 'covariance',
                'provenance')
    missing = [key for key in required if key not in document]
    if missing:
        raise BundleError(f'{path}: bundle metadata lacks {missing}')
    return document


def load_bundle(path: str | os.PathLike) -> Bundle:
    """Read and validate a bundle; tensors are loaded onto the CPU.

    Raises:
        BundleError: for a missing file, a directory, a truncated or non-safetensors file
            (pickles are never unpickled), corrupt or missing metadata, an unknown format
            version, a scene count that does not match the config, or tensors that do not
            match the config.
    """
    path = Path(path)
    data = _read_file(path)
    header = _parse_header(data, path)
    document = _parse_document(header, path)
    try:
        config = ModelConfig.from_dict(document['model_config'])
        names = _check_scene_names(document['scene_names'], config)
        preprocessing = PreprocessingConfig.from_dict(document['preprocessing'])
        alignments = _per_scene(document['scene_alignment'], names, 'scene_alignment',
                                _to_alignment, SceneAlignment.identity)
        covariances = _per_scene(document['covariance'], names, 'covariance',
                                 _check_covariance, default_covariance)
        if not isinstance(document['provenance'], dict):
            raise ValueError('provenance must be a JSON object')
        inference = check_inference(document['inference']) if 'inference' in document else None
        correlation = _per_scene(document.get('error_correlation'), names,
                                 'error_correlation', _to_correlation)
        cameras = _per_scene(document.get('training_camera'), names, 'training_camera',
                             _training_camera_checker(preprocessing.crop))
    except (TypeError, ValueError) as error:
        raise BundleError(f'{path}: invalid bundle metadata: {error}') from error
    try:
        tensors = safetensors.torch.load(data)
    except Exception as error:  # safetensors raises its own error type for corrupt payloads
        raise BundleError(f'{path}: cannot decode tensors: {error}') from error
    try:
        _check_tensors(tensors, config)
    except ValueError as error:
        raise BundleError(f'{path}: {error}') from error
    return Bundle(config=config, scene_names=names, preprocessing=preprocessing,
                  scene_alignment=alignments, covariance=covariances,
                  provenance=document['provenance'], state_dict=tensors, path=path,
                  sha256=hashlib.sha256(data).hexdigest(), inference=inference,
                  error_correlation=correlation, training_camera=cameras)


def build_model_from_bundle(bundle: Bundle) -> MSTransformer:
    """Return the bundle's model in eval mode (strict load; no ImageNet weights are read)."""
    model = build_model(replace(bundle.config, backbone_weights=None))
    try:
        model.load_state_dict(bundle.state_dict, strict=True)
    except RuntimeError as error:
        raise BundleError(f'{bundle.path}: tensors do not fit the model: {error}') from error
    return model.eval()


def _document(config: ModelConfig, names: Sequence[str], preprocessing: PreprocessingConfig,
              alignments: Mapping[str, SceneAlignment], covariances: Mapping[str, np.ndarray],
              provenance: Mapping[str, Any] | None, inference: Mapping[str, Any] | None,
              correlations: Mapping[str, ErrorCorrelation],
              cameras: Mapping[str, CameraModel]) -> dict[str, Any]:
    """Return the ``mspr_bundle`` JSON document of checked metadata (optional keys if given)."""
    document = {
        'format_version': FORMAT_VERSION,
        'model_config': config.to_dict(),
        'scene_names': list(names),
        'preprocessing': preprocessing.to_dict(),
        'scene_alignment': {n: a.to_dict() for n, a in alignments.items()},
        'covariance': {n: c.tolist() for n, c in covariances.items()},
        'provenance': dict(provenance or {}),
    }
    if inference is not None:
        document['inference'] = dict(inference)
    if correlations:
        document['error_correlation'] = {n: m.to_dict() for n, m in correlations.items()}
    if cameras:
        document['training_camera'] = {n: c.to_dict() for n, c in cameras.items()}
    return document


def bundle_metadata(bundle: Bundle) -> dict[str, Any]:
    """Return the bundle's metadata in its JSON form (for logs, diagnostics and tests)."""
    return _document(bundle.config, bundle.scene_names, bundle.preprocessing,
                     bundle.scene_alignment, bundle.covariance, bundle.provenance,
                     bundle.inference, bundle.error_correlation, bundle.training_camera)
