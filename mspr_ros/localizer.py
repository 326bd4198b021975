"""Single-image and batched relocalisation from a weights bundle (ROS-free).

Two inference back-ends run the same graph: torch (eager, the bundle's tensors) and onnxruntime
(the ONNX graph ``mspr-export --onnx`` writes beside the bundle, :mod:`mspr_ros.onnx_backend`).
``backend='auto'`` takes the one the bundle asks for (torch when it asks for none).
"""
from dataclasses import dataclass
import logging
import os
import time
from typing import Sequence

import numpy as np
import torch

from mspr_ros.bundle import build_model_from_bundle, Bundle, load_bundle
from mspr_ros.device import resolve_device
from mspr_ros.geometry.quaternions import canonical_quaternion
from mspr_ros.onnx_backend import bundle_session, OnnxSession
from mspr_ros.preprocess import preprocess_batch, validate_rgb_image

LOGGER = logging.getLogger(__name__)
BACKENDS = ('auto', 'torch', 'onnxruntime')


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

    def __init__(self, bundle: Bundle, device: str = 'auto', fp16: bool = False,
                 backend: str = 'auto') -> None:
        """Prepare the bundle's model on ``device`` ('auto', 'cpu', 'cuda', 'cuda:N').

        ``backend``: 'torch', 'onnxruntime', or 'auto' (what the bundle asks for; torch when
        it asks for none). onnxruntime runs the bundle's ONNX graph (CUDA when ``device`` is
        CUDA and onnxruntime has it, else the CPU) with torch's intra-op thread count; any
        problem with it raises BundleError here, never a silent fall-back to torch. ``fp16``
        enables float16 autocast; it is only honoured by torch on CUDA (warning otherwise).
        """
        self._bundle = bundle
        self._backend = resolve_backend(bundle, backend)
        self._device = resolve_device(device)
        self._session: OnnxSession | None = None
        self._model: torch.nn.Module | None = None
        if self._backend == 'onnxruntime':
            self._session = bundle_session(bundle, self._device)
            self._device = self._session.device
        self._fp16 = bool(fp16) and self._device.type == 'cuda' and self._session is None
        if fp16 and not self._fp16:
            LOGGER.warning('fp16 inference needs torch on CUDA; running in float32 with %s on '
                           '%s', self._backend, self._device)
        if self._session is None:
            self._model = build_model_from_bundle(bundle).to(self._device).eval()
        self._covariances = [bundle.covariance[name] for name in bundle.scene_names]
        self.timings = LocalizerTimings(preprocess_ms=0.0, inference_ms=0.0)

    @classmethod
    def from_file(cls, path: str | os.PathLike, device: str = 'auto',
                  fp16: bool = False, backend: str = 'auto') -> 'Localizer':
        """Load the bundle at ``path`` (raises BundleError) and build a localizer."""
        return cls(load_bundle(path), device=device, fp16=fp16, backend=backend)

    @property
    def backend(self) -> str:
        """The back-end that runs the model: 'torch' or 'onnxruntime'."""
        return self._backend

    @property
    def onnx_session(self) -> OnnxSession | None:
        """The ONNX Runtime session (onnxruntime back-end), else None."""
        return self._session

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
        """The torch model in eval mode on :attr:`device` (for diagnostics).

        With the onnxruntime back-end it is built on first use; inference never uses it.
        """
        if self._model is None:
            self._model = build_model_from_bundle(self._bundle).to(self._device).eval()
        return self._model

    def warmup(self, n: int = 2) -> None:
        """Run ``n`` forward passes on a grey image so later calls have steady latency."""
        size = self._bundle.preprocessing.resize
        grey = np.full((size, size, 3), 128, dtype=np.uint8)
        for _ in range(n):
            self.localize(grey)

    def localize(self, rgb: np.ndarray) -> LocalizationResult:
        """Localise one ``H x W x 3`` uint8 RGB image of any size.

        Raises:
            ValueError: the image is not a non-empty H x W x 3 uint8 array.
        """
        validate_rgb_image(rgb)
        return self.localize_batch([rgb], batch_size=1)[0]

    def localize_batch(self, images: Sequence[np.ndarray],
                       batch_size: int = 16) -> list[LocalizationResult]:
        """Localise several images (each ``H x W x 3`` uint8 RGB), ``batch_size`` at a time."""
        if batch_size < 1:
            raise ValueError(f'batch_size must be positive, got {batch_size}')
        for index, rgb in enumerate(images):
            validate_rgb_image(rgb, name=f'image {index}')
        results: list[LocalizationResult] = []
        preprocess_s = inference_s = 0.0
        for start in range(0, len(images), batch_size):
            started = time.perf_counter()
            batch = preprocess_batch(images[start:start + batch_size], self._bundle.preprocessing)
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
        with torch.inference_mode(), torch.autocast(device_type=self._device.type,
                                                    dtype=torch.float16, enabled=self._fp16):
            outputs = self._model(batch.to(self._device, non_blocking=True))
        scenes = outputs['scene'].cpu().numpy()
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
