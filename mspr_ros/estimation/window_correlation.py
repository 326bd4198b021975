"""The design factors of a fusion window's frames under per-scene error correlation models.

``mspr_ros.estimation.error_correlation`` holds the model and the design factor of one set of
frames; this applies them to the fusion's window (``mspr_ros.estimation.fusion``): the frames'
correlation by their scenes' models, one design factor per subset the fusion fuses, and, when a
model is per block, one per block of the covariance.
"""
from __future__ import annotations

from typing import Mapping, Optional, Sequence

import numpy as np

from mspr_ros.estimation.error_correlation import (
    design_factors, ErrorCorrelation, scalar_information, scene_correlation)


class WindowCorrelations:
    """The design factors of a window's frames under per-scene models (the fusion's).

    One factor per subset of frames, or, when a model is per block, one per block: the
    covariance of a subset is then multiplied by ``sqrt(f_a f_b)`` for axes ``a``, ``b`` of
    blocks with factors ``f_a``, ``f_b`` (``D C D``, the module docstring).
    """

    def __init__(self, models: Mapping[str, ErrorCorrelation], default: ErrorCorrelation,
                 axes: Sequence[int]) -> None:
        """Use ``models`` (scene -> model) and ``default`` on covariances of ``axes``.

        ``axes`` are the ROS-order axes (0-2 position, 3-5 rotation) of the d x d covariances.
        """
        self._models, self._default = models, default
        per_block = any(model.per_block for model in (default, *models.values()))
        self._position_axes = np.asarray(axes) < 3 if per_block else None

    def factors(self, scenes: Sequence[str], positions: np.ndarray, quats: np.ndarray,
                stamps_ns: Optional[np.ndarray], infos: np.ndarray,
                masks: np.ndarray) -> np.ndarray:
        """Return (P,) factors, or (P, d, d) with per-block models, of the P ``masks``.

        ``infos`` (N, d, d) are the frames' information matrices (their weights); the other
        arguments are :func:`scene_correlation`'s and :func:`design_factors`'.
        """
        views = (scenes, positions, quats, stamps_ns)
        if self._position_axes is None:
            return self._block(views, 'position', infos, masks)
        position = self._position_axes
        factors = np.empty((len(masks), len(position)))
        for block, axes in (('position', position), ('rotation', ~position)):
            factors[:, axes] = self._block(views, block, infos[:, axes][:, :, axes],
                                           masks)[:, None]
        roots = np.sqrt(factors)
        return roots[:, :, None] * roots[:, None, :]

    def _block(self, views, block: str, infos: np.ndarray, masks: np.ndarray) -> np.ndarray:
        """Return the (P,) design factors of one block, weighted by ``infos``' determinants."""
        scenes, positions, quats, stamps_ns = views
        rho = scene_correlation(scenes, self._models, self._default, positions, quats,
                                stamps_ns, block)
        if np.count_nonzero(rho) == len(rho):   # independent: spare the determinants
            return np.ones(len(masks))
        return design_factors(rho, scalar_information(infos), masks)
