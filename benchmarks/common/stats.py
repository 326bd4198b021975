"""Summaries of measured samples: count, mean, percentiles, extremes."""
from dataclasses import dataclass
from typing import Iterable

import numpy as np


@dataclass
class Summary:
    """Distribution of a sample of durations (milliseconds) or other values."""

    count: int
    mean: float
    p50: float
    p95: float
    p99: float
    min: float
    max: float


def summarise(values: Iterable[float]) -> Summary:
    """Return count, mean, 50/95/99th percentiles, min and max of ``values``.

    Raises:
        ValueError: when ``values`` is empty or holds a non-finite number.
    """
    array = np.asarray(list(values), dtype=np.float64)
    if array.size == 0:
        raise ValueError('no values to summarise')
    if not np.isfinite(array).all():
        raise ValueError(f'non-finite values in the sample: {array[~np.isfinite(array)][:5]}')
    p50, p95, p99 = np.percentile(array, [50, 95, 99])
    return Summary(count=int(array.size), mean=float(array.mean()), p50=float(p50),
                   p95=float(p95), p99=float(p99), min=float(array.min()),
                   max=float(array.max()))
