"""Batch-1 inference replayed from a captured CUDA graph (ROS-free).

At batch 1 a small model on a fast GPU spends most of its time launching kernels from Python:
hundreds of launches of microseconds each. A CUDA graph records them once and replays them with
one launch. A graph is fixed to its input and output memory, so :class:`CudaGraphForward` owns
static tensors: each call copies the image into the static input, replays, and returns clones of
the static outputs (the next replay overwrites them).

Capture needs a forward without host synchronisation or data-dependent shapes. The model's
inference path has none (``MSTransformer.forward`` selects the scene latent with ``argmax`` and
tensor indexing on the device; shape checks read shapes, not values), and the sine positional
encoding's per-shape cache is filled by the warm-up before capture. Autocast runs with its weight
cache off, as PyTorch requires for capture.
"""
import contextlib
from typing import Optional

import torch

# Warm-up calls on a side stream before capture: cuDNN/cuBLAS pick their kernels and allocate
# workspaces, lazy caches fill, so capture records steady-state work only.
WARMUP_CALLS = 3


def cuda_graph_obstacle(device: torch.device, backend: str) -> Optional[str]:
    """Return why CUDA graphs cannot run for ``device`` and ``backend``, None when they can."""
    if backend != 'torch':
        return f'they need the torch back-end, not {backend}'
    if device.type != 'cuda':
        return f'they need a CUDA device, not {device}'
    return None


def autocast(device: torch.device, dtype: Optional[torch.dtype],
             cache_enabled: bool = True) -> contextlib.AbstractContextManager:
    """Return autocast to ``dtype`` on ``device`` (no autocast when ``dtype`` is None)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype, cache_enabled=cache_enabled)


class CudaGraphForward:
    """``model(images)`` for one input shape, captured into a CUDA graph and replayed per call."""

    def __init__(self, model: torch.nn.Module, device: torch.device, input_shape: tuple,
                 autocast_dtype: Optional[torch.dtype] = None,
                 warmup_calls: int = WARMUP_CALLS) -> None:
        """Warm ``model`` (eval mode, on ``device``) up on a side stream, then capture it.

        Args:
            model: returns a dict of tensors for a float32 input of ``input_shape``.
            device: the CUDA device holding ``model``.
            input_shape: the one input shape, e.g. ``(1, 3, crop, crop)``.
            autocast_dtype: torch.float16 or torch.bfloat16 autocast; None runs float32.
            warmup_calls: eager calls before capture.

        Raises:
            ValueError: ``device`` is not CUDA.
        """
        if device.type != 'cuda':
            raise ValueError(f'CUDA graphs need a CUDA device, got {device}')
        self.input_shape = tuple(input_shape)
        self._model = model
        self._device = device
        self._dtype = autocast_dtype
        with torch.cuda.device(device):
            self._static_input = torch.zeros(self.input_shape, device=device)
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(warmup_calls):
                    self._forward()
            torch.cuda.current_stream().wait_stream(side)
            self._graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self._graph):
                self._static_outputs = self._forward()

    def _forward(self) -> dict:
        """Run the model on the static input (what warm-up runs and capture records)."""
        with torch.inference_mode(), autocast(self._device, self._dtype, cache_enabled=False):
            return self._model(self._static_input)

    def __call__(self, images: torch.Tensor) -> dict:
        """Return the model's outputs for ``images`` (``input_shape``, any device), on the GPU.

        Raises:
            ValueError: ``images`` does not have the captured shape.
        """
        if tuple(images.shape) != self.input_shape:
            raise ValueError(f'the CUDA graph was captured for input {self.input_shape}, got '
                             f'{tuple(images.shape)}')
        with torch.inference_mode(), torch.cuda.device(self._device):
            self._static_input.copy_(images, non_blocking=True)
            self._graph.replay()
            return {key: value.clone() for key, value in self._static_outputs.items()}
