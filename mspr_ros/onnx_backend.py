"""The Localizer's ONNX Runtime back-end: the inference graph, its export and its session.

The graph is the model's inference path as :class:`mspr_ros.localizer.Localizer` runs it with
torch: input ``images`` (float32 ``N x 3 x crop x crop``, preprocessed as the bundle says),
outputs ``position`` (N x 3), ``orientation`` (N x 4, xyzw, not normalised),
``scene_log_probs`` (N x S) and ``scene`` (N, int64: the argmax scene whose query gave the pose).
The batch axis (named ``batch``) is dynamic; the image size is the bundle's crop.

A bundle asks for this back-end with its ``inference`` entry (``mspr_ros.bundle.check_inference``):
the graph is a file beside the bundle whose SHA-256 is checked at load. Every problem (no entry,
missing or altered file, a graph that does not fit the bundle, onnxruntime not installed) raises
:class:`BundleError` naming the file: nothing falls back to torch silently.

A session runs batches of one image (the node's case) through a copy of the graph specialised
to batch 1: onnxruntime's free-dimension override lets it fold away the shape arithmetic of the
dynamic axis (10-35 % less time at batch 1 on the CPU for the demo and paper models). Other
batch sizes go through the dynamic graph, opened on first use.

onnxruntime is imported only when a session is made, and torch.onnx only when exporting, so the
core imports without them.
"""
import hashlib
import io
import logging
import os
from pathlib import Path
from typing import Any
import warnings

import numpy as np
import torch
from torch import nn

from mspr_ros.bundle import Bundle, BundleError
from mspr_ros.runtime.atomic_file import atomic_write

LOGGER = logging.getLogger(__name__)
DEFAULT_OPSET = 17
INPUT_NAME = 'images'
OUTPUT_NAMES = ('position', 'orientation', 'scene_log_probs', 'scene')
BATCH_AXIS = 'batch'
ONNXRUNTIME_PACKAGE = 'onnxruntime'


class InferenceGraph(nn.Module):
    """The model's inference forward as a tuple, in :data:`OUTPUT_NAMES` order (for export)."""

    def __init__(self, model: nn.Module) -> None:
        """Wrap an :class:`mspr_ros.model.ms_transformer.MSTransformer`."""
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Return position, orientation, scene log-probabilities and the selected scene."""
        outputs = self.model(images)
        return tuple(outputs[name] for name in OUTPUT_NAMES)


def onnx_path_for(bundle_path: str | os.PathLike) -> Path:
    """Return where the graph of a bundle goes: beside it, ``model.safetensors -> model.onnx``."""
    return Path(bundle_path).with_suffix('.onnx')


def file_sha256(path: str | os.PathLike) -> str:
    """Return the hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with open(path, 'rb') as handle:
        for block in iter(lambda: handle.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


def export_onnx(model: nn.Module, path: str | os.PathLike, crop: int,
                opset: int = DEFAULT_OPSET) -> str:
    """Write the inference graph of ``model`` (any device; exported on the CPU) atomically.

    Uses the TorchScript-based exporter (``dynamo=False``: no onnxscript needed); the batch
    axis is dynamic. ``model`` is left in eval mode on the CPU. Returns the file's SHA-256.
    """
    graph = InferenceGraph(model.cpu().eval()).eval()
    # Batch 2, not 1: a trace at batch 1 could fold the batch into a constant.
    example = torch.zeros(2, 3, crop, crop)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The legacy exporter's deprecation notice and the tracer's notes on the model's input
        # checks (constant for a fixed image size) say nothing about this graph.
        warnings.simplefilter('ignore', category=DeprecationWarning)
        warnings.simplefilter('ignore', category=torch.jit.TracerWarning)
        warnings.filterwarnings('ignore', message='.*advanced indexing.*')
        torch.onnx.export(graph, (example,), buffer, dynamo=False, opset_version=opset,
                          input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
                          dynamic_axes={name: {0: BATCH_AXIS}
                                        for name in (INPUT_NAME, *OUTPUT_NAMES)},
                          do_constant_folding=True)
    model.eval()
    with atomic_write(Path(path)) as handle:
        handle.write(buffer.getvalue())
    return hashlib.sha256(buffer.getvalue()).hexdigest()


def _import_onnxruntime(owner: str) -> Any:
    """Return the onnxruntime module or raise BundleError naming ``owner`` and the package."""
    try:
        import onnxruntime
    except ImportError as error:
        raise BundleError(f'{owner}: asks for the onnxruntime inference backend, but the Python '
                          f'package {ONNXRUNTIME_PACKAGE!r} is not installed ({error}); install '
                          "it (pip install onnxruntime) or choose backend='torch'") from error
    return onnxruntime


class OnnxSession:
    """An ONNX Runtime session of an inference graph.

    Attributes:
        path: the graph file.
        device: where it runs: CUDA when asked for and onnxruntime has CUDA, else the CPU.
        providers: the execution providers the session runs with, in priority order.
        runs: number of :meth:`run` calls (tests check that this back-end really ran).
        threads: intra-op threads of the session.
    """

    def __init__(self, path: str | os.PathLike, device: torch.device | str = 'cpu',
                 threads: int | None = None, owner: str | None = None) -> None:
        """Open the graph at ``path`` for ``device`` with ``threads`` intra-op threads.

        ``threads`` None uses torch's intra-op thread count, so a process that sets
        ``torch.set_num_threads`` sets both back-ends alike. ``owner`` (default: the graph)
        names what asked for the session in errors.

        Raises:
            BundleError: onnxruntime is missing, or the file cannot be read as a graph.
        """
        self.path = Path(path)
        owner = owner or str(self.path)
        ort = _import_onnxruntime(owner)
        device = torch.device(device)
        self._requested: list = ['CPUExecutionProvider']
        self.device = torch.device('cpu')
        if device.type == 'cuda':
            if 'CUDAExecutionProvider' in ort.get_available_providers():
                self._requested.insert(0, ('CUDAExecutionProvider',
                                           {'device_id': device.index or 0}))
                self.device = device
            else:
                LOGGER.warning('%s: onnxruntime has no CUDAExecutionProvider (installed: %s); '
                               'running on the CPU', owner, ort.get_available_providers())
        self.threads = int(threads or torch.get_num_threads())
        self._ort, self._owner = ort, owner
        # Keyed by batch size: 1 (specialised, opened now so errors surface at load), None (any).
        self._sessions = {1: self._open(batch_one=True)}
        self.providers = list(self._sessions[1].get_providers())
        if self.device.type == 'cuda' and 'CUDAExecutionProvider' not in self.providers:
            # onnxruntime-gpu without a usable CUDA runtime falls back by itself: say so.
            LOGGER.warning('%s: onnxruntime could not start CUDA; running on the CPU', owner)
            self.device = torch.device('cpu')
        self.runs = 0

    def _open(self, batch_one: bool) -> Any:
        """Return an InferenceSession of the graph (specialised to batch 1 if asked)."""
        ort = self._ort
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if batch_one:
            options.add_free_dimension_override_by_name(BATCH_AXIS, 1)
        try:
            return ort.InferenceSession(str(self.path), sess_options=options,
                                        providers=self._requested)
        except Exception as error:  # onnxruntime raises its own types for unreadable graphs
            raise BundleError(f'{self._owner}: cannot load the ONNX graph {self.path}: '
                              f'{error}') from error

    def input_shape(self) -> list:
        """Return the graph's input shape without its batch axis: ``[3, H, W]`` (ints)."""
        return list(self._sessions[1].get_inputs()[0].shape)[1:]

    def output_names(self) -> list[str]:
        """Return the graph's output names."""
        return [output.name for output in self._sessions[1].get_outputs()]

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Run the graph on float32 ``N x 3 x H x W`` images; return the outputs by name."""
        self.runs += 1
        images = np.ascontiguousarray(images, dtype=np.float32)
        key = 1 if images.shape[0] == 1 else None
        if key not in self._sessions:
            self._sessions[key] = self._open(batch_one=False)
        outputs = self._sessions[key].run(list(OUTPUT_NAMES), {INPUT_NAME: images})
        return dict(zip(OUTPUT_NAMES, outputs))


def bundle_session(bundle: Bundle, device: torch.device | str = 'cpu',
                   threads: int | None = None) -> OnnxSession:
    """Open the ONNX graph a bundle asks for, after checking it is the one it was exported with.

    Raises:
        BundleError: the bundle names no ONNX graph; the file is missing or its SHA-256 differs
            from the bundle's; onnxruntime is not installed; the graph's input or outputs do not
            fit the bundle (crop size, scene count).
    """
    entry = bundle.inference or {}
    if entry.get('backend') != 'onnxruntime':
        raise BundleError(f'{bundle.path}: the bundle has no ONNX graph (its metadata asks for '
                          f"backend {entry.get('backend', 'torch')!r}); export one with "
                          'mspr-export --onnx')
    path = Path(bundle.path).parent / entry['onnx_file'] if bundle.path is not None \
        else Path(entry['onnx_file'])
    if not path.is_file():
        raise BundleError(f'{bundle.path}: its ONNX graph {path} is missing: copy it beside the '
                          "bundle, or choose backend='torch'")
    digest = file_sha256(path)
    if digest != entry['onnx_sha256']:
        raise BundleError(f'{bundle.path}: its ONNX graph {path} has SHA-256 {digest}, not the '
                          f"{entry['onnx_sha256']} the bundle was exported with: the file was "
                          'altered or belongs to another bundle')
    session = OnnxSession(path, device, threads, owner=str(bundle.path))
    crop, scenes = bundle.preprocessing.crop, len(bundle.scene_names)
    shape, names = session.input_shape(), session.output_names()
    if shape != [3, crop, crop] or names != list(OUTPUT_NAMES):
        raise BundleError(f'{bundle.path}: its ONNX graph {path} takes N x {shape} images and '
                          f'gives {names}, but the bundle needs N x [3, {crop}, {crop}] and '
                          f'{list(OUTPUT_NAMES)}')
    probe = session.run(np.zeros((1, 3, crop, crop), np.float32))
    session.runs = 0
    if probe['scene_log_probs'].shape != (1, scenes):
        raise BundleError(f'{bundle.path}: its ONNX graph {path} scores '
                          f"{probe['scene_log_probs'].shape[1]} scenes, the bundle has {scenes}")
    return session
