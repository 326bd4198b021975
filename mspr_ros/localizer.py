"""Single-image and batched relocalisation from a weights bundle (ROS-free).

Two inference back-ends run the same graph: torch (eager, the bundle's model rewritten for
inference by :mod:`mspr_ros.model.inference`) and onnxruntime (the ONNX graph ``mspr-export
--onnx`` writes, :mod:`mspr_ros.onnx_backend`); ``backend='auto'`` takes the one the bundle asks
for (torch when it asks for none). With torch, ``precision`` 'fp16' or 'bf16' runs the model
under autocast (:mod:`mspr_ros.precision`), and ``cuda_graphs`` replays single images from a
captured CUDA graph (:mod:`mspr_ros.cuda_graph`); batches of several images run eagerly.
``torch_compile`` runs the rewritten model compiled by ``torch.compile``, compiled when the
localizer is built (:mod:`mspr_ros.compiled_forward`; a failed compile raises ``CompileError``).

Any camera: given the :class:`~mspr_ros.camera.model.CameraModel` an image was taken with, the
image is reprojected into the camera the network was trained with (the bundle's
``training_camera``; :mod:`mspr_ros.camera.reprojection`, maps built once per camera) instead of
being resized and cropped.
"""
from dataclasses import dataclass
import logging
import os
import time
from typing import Optional, Sequence
import warnings

import numpy as np
import torch

from mspr_ros.bundle import build_model_from_bundle, Bundle, load_bundle
from mspr_ros.camera.model import CameraModel
from mspr_ros.camera.reprojection import Reprojection, ReprojectionCache
from mspr_ros.camera.training_camera import bundle_training_camera
from mspr_ros.compiled_forward import compile_model
from mspr_ros.cuda_graph import autocast, cuda_graph_obstacle, CudaGraphForward
from mspr_ros.device import resolve_device, supports_bf16
from mspr_ros.geometry.quaternions import canonical_quaternion
from mspr_ros.model.inference import inference_model
from mspr_ros.onnx_backend import bundle_session, OnnxSession
from mspr_ros.precision import check_precision, resolve_precision
from mspr_ros.preprocess import preprocess_batch, validate_rgb_image

LOGGER = logging.getLogger(__name__)
BACKENDS = ('auto', 'torch', 'onnxruntime')
AUTOCAST_DTYPES = {'fp32': None, 'fp16': torch.float16, 'bf16': torch.bfloat16}


class CameraError(ValueError):
    """An image's camera cannot be brought to the training camera; the message says why."""


@dataclass(frozen=True)
class LocalizationResult:
    """Pose of one image in its predicted scene (arrays are read-only float64).

    Attributes:
        scene_name: predicted scene (the bundle's name for ``scene_index``).
        scene_index: index of the predicted scene.
        scene_confidence: softmax probability of the predicted scene.
        scene_probabilities: ``(S,)`` probabilities of all scenes.
        position: ``(3,)`` camera centre in the scene frame, metres.
        orientation: ``(4,)`` unit quaternion x, y, z, w of ``R_scene_cam`` with ``w >= 0``.
        covariance: ``(6, 6)`` calibrated covariance of the predicted scene
            (x y z roll pitch yaw; m^2, rad^2).
    """

    scene_name: str
    scene_index: int
    scene_confidence: float
    scene_probabilities: np.ndarray
    position: np.ndarray
    orientation: np.ndarray
    covariance: np.ndarray


@dataclass(frozen=True)
class LocalizerTimings:
    """Wall-clock durations of the last localize call, milliseconds."""

    preprocess_ms: float
    inference_ms: float


def _read_only(array: np.ndarray) -> np.ndarray:
    """Return a float64 copy that cannot be modified (results are shared values)."""
    array = np.array(array, dtype=np.float64)
    array.setflags(write=False)
    return array


def _model_orientation(quaternion_xyzw: np.ndarray) -> np.ndarray:
    """Return the model's quaternion as the project's canonical unit quaternion.

    Raises:
        ValueError: for a non-finite or zero-length output, saying the model produced it.
    """
    try:
        return canonical_quaternion(quaternion_xyzw)
    except ValueError as error:
        raise ValueError(f'the model produced a degenerate orientation: {error}') from error


def asked_precision(precision: str, fp16: Optional[bool]) -> str:
    """Return the precision asked for by ``precision`` and the deprecated ``fp16`` flag.

    ``fp16`` (None: not given) warns with a DeprecationWarning; ``fp16=True`` means 'fp16'.

    Raises:
        ValueError: ``precision`` is not one of PRECISIONS, or ``fp16=True`` contradicts it.
    """
    check_precision(precision)
    if fp16 is None:
        return precision
    warnings.warn("Localizer's fp16 argument is deprecated: use precision='fp16'",
                  DeprecationWarning, stacklevel=3)
    if not fp16:
        return precision
    if precision == 'bf16':
        raise ValueError("fp16=True contradicts precision='bf16'; pass precision alone")
    return 'fp16'


def resolve_backend(bundle: Bundle, backend: str) -> str:
    """Return 'torch' or 'onnxruntime': ``backend``, or for 'auto' what the bundle asks for."""
    if backend not in BACKENDS:
        raise ValueError(f'backend must be one of {BACKENDS}, got {backend!r}')
    if backend != 'auto':
        return backend
    return (bundle.inference or {}).get('backend', 'torch')


class Localizer:
    """Load a bundle once, then regress scene and pose for RGB images.

    ``timings`` holds the :class:`LocalizerTimings` of the last localize call.
    """

    def __init__(self, bundle: Bundle, device: str = 'auto', fp16: Optional[bool] = None,
                 backend: str = 'auto', *, precision: str = 'fp32',
                 cuda_graphs: bool = False, torch_compile: bool = False) -> None:
        """Prepare the bundle's model on ``device`` ('auto', 'cpu', 'cuda', 'cuda:N').

        ``backend``: 'torch', 'onnxruntime', or 'auto' (what the bundle asks for; torch when
        it asks for none). onnxruntime runs the bundle's ONNX graph (CUDA when ``device`` is
        CUDA and onnxruntime has it, else the CPU) with torch's intra-op thread count; any
        problem with it raises BundleError here, never a silent fall-back to torch.

        ``precision``: 'fp32', 'fp16' or 'bf16' (autocast; :mod:`mspr_ros.precision` says where
        each runs, anything else runs fp32 with one warning). ``cuda_graphs``: replay
        single-image calls from a CUDA graph captured here (torch on CUDA only; elsewhere one
        warning and eager runs). ``fp16`` is deprecated: ``fp16=True`` means
        ``precision='fp16'``. :attr:`precision` and :attr:`cuda_graphs` say what runs.
        ``torch_compile``: compile the torch model now (module docstring; :attr:`torch_compile`);
        with the onnxruntime back-end, one warning and the graph runs as it is.

        Raises:
            ValueError: unknown ``precision`` or ``backend``, ``fp16=True`` with 'bf16', or
                ``torch_compile`` with ``cuda_graphs`` (the graph would replay eager kernels).
            CompileError: ``torch.compile`` failed (no C++ compiler, an unsupported operator).
        """
        if torch_compile and cuda_graphs:
            raise ValueError('torch_compile and cuda_graphs exclude each other: the CUDA graph '
                             'captures the eager model; ask for one of them')
        asked = asked_precision(precision, fp16)
        self._bundle = bundle
        self._backend = resolve_backend(bundle, backend)
        self._device = resolve_device(device)
        self._session: OnnxSession | None = None
        self._model: torch.nn.Module | None = None
        if self._backend == 'onnxruntime':
            self._session = bundle_session(bundle, self._device)
            self._device = self._session.device
        self._precision, warning = resolve_precision(asked, self._device.type, self._backend,
                                                     supports_bf16(self._device))
        if warning:
            LOGGER.warning(warning)
        self._autocast_dtype = AUTOCAST_DTYPES[self._precision]
        if self._session is None:
            self._model = inference_model(build_model_from_bundle(bundle)).to(self._device)
        self._graph: CudaGraphForward | None = None
        if cuda_graphs:
            obstacle = cuda_graph_obstacle(self._device, self._backend)
            if obstacle:
                LOGGER.warning('cuda_graphs asked for, but %s; running eagerly', obstacle)
            else:
                crop = bundle.preprocessing.crop
                self._graph = CudaGraphForward(self._model, self._device, (1, 3, crop, crop),
                                               self._autocast_dtype)
        self._covariances = [bundle.covariance[name] for name in bundle.scene_names]
        self._training_camera, self._training_camera_problem = bundle_training_camera(bundle)
        self._reprojections = ReprojectionCache()
        self.timings = LocalizerTimings(preprocess_ms=0.0, inference_ms=0.0)
        self._forward = self._model
        self._compiled = False
        if torch_compile and self._session is not None:
            LOGGER.warning('torch_compile asked for, but the %s back-end runs the bundle\'s '
                           'graph; not compiling', self._backend)
        elif torch_compile:
            # For single images, what the node runs: no frame pays for the compile.
            crop = bundle.preprocessing.crop
            self._forward = compile_model(
                self._model, torch.zeros(1, 3, crop, crop, device=self._device),
                lambda: autocast(self._device, self._autocast_dtype))
            self._compiled = True

    @classmethod
    def from_file(cls, path: str | os.PathLike, device: str = 'auto',
                  fp16: Optional[bool] = None, backend: str = 'auto', *,
                  precision: str = 'fp32', cuda_graphs: bool = False,
                  torch_compile: bool = False) -> 'Localizer':
        """Load the bundle at ``path`` (raises BundleError) and build a localizer."""
        return cls(load_bundle(path), device=device, fp16=fp16, backend=backend,
                   precision=precision, cuda_graphs=cuda_graphs, torch_compile=torch_compile)

    @property
    def precision(self) -> str:
        """What runs: 'fp32', 'fp16', 'bf16' (after any fall-back), or 'int8' (a quantized graph).

        'int8': the onnxruntime back-end on the bundle's int8 graph (:attr:`quantization`).
        """
        return 'int8' if self.quantization is not None else self._precision

    @property
    def quantization(self) -> dict | None:
        """The quantized graph's description (bundle ``inference.quantization``), or None."""
        if self._session is None:
            return None
        return (self._bundle.inference or {}).get('quantization')

    @property
    def cuda_graphs(self) -> bool:
        """Whether single-image calls replay a captured CUDA graph."""
        return self._graph is not None

    @property
    def torch_compile(self) -> bool:
        """Whether the torch model runs compiled by ``torch.compile``."""
        return self._compiled

    @property
    def backend(self) -> str:
        """The back-end that runs the model: 'torch' or 'onnxruntime'."""
        return self._backend

    @property
    def onnx_session(self) -> OnnxSession | None:
        """The ONNX Runtime session (onnxruntime back-end), else None."""
        return self._session

    @property
    def training_camera(self) -> CameraModel | None:
        """The pinhole the network was trained with, at the crop size; None when unknown."""
        return self._training_camera

    @property
    def training_camera_problem(self) -> str | None:
        """Why :attr:`training_camera` is None (None when it is known)."""
        return self._training_camera_problem

    @property
    def reprojection_builds(self) -> int:
        """How many camera reprojections were built (once per camera, not per frame)."""
        return self._reprojections.builds

    def reprojection(self, camera: CameraModel) -> Reprojection:
        """Return the reprojection of ``camera`` into the training camera (built once, cached).

        Its ``covers`` says whether ``camera`` sees the whole training field of view.

        Raises:
            CameraError: the bundle has no single training camera (the reason is in the message).
        """
        if self._training_camera is None:
            raise CameraError(f'cannot bring a camera to the training camera: '
                              f'{self._training_camera_problem}')
        return self._reprojections.get(camera, self._training_camera)

    @property
    def scene_names(self) -> list[str]:
        """Scene names in index order."""
        return list(self._bundle.scene_names)

    @property
    def device(self) -> torch.device:
        """Device the model runs on."""
        return self._device

    @property
    def bundle(self) -> Bundle:
        """The loaded bundle: metadata and CPU tensors."""
        return self._bundle

    @property
    def model(self) -> torch.nn.Module:
        """The torch model it runs on :attr:`device` (onnxruntime: built when first asked)."""
        if self._model is None:
            self._model = inference_model(build_model_from_bundle(self._bundle)).to(self._device)
        return self._model

    def warmup(self, n: int = 2) -> None:
        """Run ``n`` forward passes on a grey image so later calls have steady latency."""
        size = self._bundle.preprocessing.resize
        grey = np.full((size, size, 3), 128, dtype=np.uint8)
        for _ in range(n):
            self.localize(grey)

    def localize(self, rgb: np.ndarray, camera: CameraModel | None = None
                 ) -> LocalizationResult:
        """Localise one ``H x W x 3`` uint8 RGB image of any size.

        ``camera``: the camera that took it (at the image's size). Given, the image is
        reprojected into the training camera (:meth:`reprojection`); None: resized and cropped.

        Raises:
            ValueError: the image is not a non-empty H x W x 3 uint8 array, or not the size of
                ``camera``.
            CameraError: a camera is given but the bundle has no single training camera.
        """
        validate_rgb_image(rgb)
        return self.localize_batch([rgb], batch_size=1, camera=camera)[0]

    def localize_batch(self, images: Sequence[np.ndarray], batch_size: int = 16,
                       camera: CameraModel | None = None) -> list[LocalizationResult]:
        """Localise several images (each ``H x W x 3`` uint8 RGB), ``batch_size`` at a time.

        ``camera``: the camera of every image (see :meth:`localize`).
        """
        if batch_size < 1:
            raise ValueError(f'batch_size must be positive, got {batch_size}')
        for index, rgb in enumerate(images):
            validate_rgb_image(rgb, name=f'image {index}')
        reprojection = None if camera is None else self.reprojection(camera)
        results: list[LocalizationResult] = []
        preprocess_s = inference_s = 0.0
        for start in range(0, len(images), batch_size):
            started = time.perf_counter()
            batch = preprocess_batch(images[start:start + batch_size], self._bundle.preprocessing,
                                     reprojection)
            preprocessed = time.perf_counter()
            scenes, log_probs, positions, orientations = self._infer(batch)
            inferred = time.perf_counter()
            preprocess_s += preprocessed - started
            inference_s += inferred - preprocessed
            results.extend(self._result(int(s), lp, p, q)
                           for s, lp, p, q in zip(scenes, log_probs, positions, orientations))
        self.timings = LocalizerTimings(preprocess_ms=1e3 * preprocess_s,
                                        inference_ms=1e3 * inference_s)
        return results

    def run_model(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        """Run the torch model at :attr:`precision` on a preprocessed ``B x 3 x H x W`` batch.

        A batch of one image replays the CUDA graph when :attr:`cuda_graphs` is on; other
        batches run eagerly. Outputs are the model's dict, on :attr:`device`, possibly in half
        precision; the call returns once the work is queued (CUDA runs asynchronously).

        Raises:
            RuntimeError: with the onnxruntime back-end, which has no torch model to run.
        """
        if self._session is not None:
            raise RuntimeError('run_model runs the torch back-end; this localizer runs '
                               'onnxruntime')
        if self._graph is not None and batch.shape[0] == 1:
            return self._graph(batch)
        with torch.inference_mode(), autocast(self._device, self._autocast_dtype):
            return self._forward(batch.to(self._device, non_blocking=True))

    def _infer(self, batch: torch.Tensor) -> tuple[np.ndarray, ...]:
        """Run the model on a ``B x 3 x H x W`` batch.

        Returns:
            ``(scene B, scene_log_probs B x S, position B x 3, orientation B x 4)`` as numpy.
        """
        if self._session is not None:
            outputs = self._session.run(batch.numpy())
            return (outputs['scene'], *(outputs[key].astype(np.float64)
                                        for key in ('scene_log_probs', 'position',
                                                    'orientation')))
        outputs = self.run_model(batch)
        scenes = outputs['scene'].cpu().numpy()
        # float() first: numpy has no bfloat16.
        return (scenes, *(outputs[key].float().cpu().numpy().astype(np.float64)
                          for key in ('scene_log_probs', 'position', 'orientation')))

    def _result(self, index: int, log_probs: np.ndarray, position: np.ndarray,
                orientation: np.ndarray) -> LocalizationResult:
        """Assemble the result of one image from its model outputs (``index``: its scene)."""
        probabilities = np.exp(log_probs)
        return LocalizationResult(
            scene_name=self._bundle.scene_names[index],
            scene_index=index,
            scene_confidence=float(probabilities[index]),
            scene_probabilities=_read_only(probabilities),
            position=_read_only(position),
            orientation=_read_only(_model_orientation(orientation)),
            covariance=_read_only(self._covariances[index]),
        )
