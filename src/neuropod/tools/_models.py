"""Opening the models a tool runs, and the latency statistics every tool reports."""

from __future__ import annotations

import contextlib
import os
from typing import Any, Dict, Iterator, Sequence

import numpy as np

from ..loader import Neuropod, load_neuropod

__all__ = ["opened", "latency_stats", "describe"]


@contextlib.contextmanager
def opened(model: Any, **load_options: Any) -> Iterator[Neuropod]:
    """A loaded model: ``model`` itself when already loaded (left open), else loaded from a path or URL and closed."""
    if isinstance(model, Neuropod):
        yield model
        return
    with load_neuropod(os.fspath(model), **load_options) as loaded:
        yield loaded


def describe(model: Neuropod, source: Any) -> Dict[str, Any]:
    """What a report says about a model."""
    return {
        "name": model.name,
        "platform": model.platform,
        "source": os.fspath(source) if isinstance(source, (str, os.PathLike)) else repr(source),
        "executor": type(model.executor).__name__,
    }


def latency_stats(seconds: Sequence[float]) -> Dict[str, float]:
    """p50/p90/p99/mean/min/max in milliseconds."""
    if not len(seconds):
        return {key: float("nan") for key in ("p50", "p90", "p99", "mean", "min", "max")}
    millis = np.asarray(seconds, dtype=np.float64) * 1e3
    p50, p90, p99 = np.percentile(millis, [50, 90, 99])
    return {
        "p50": float(p50),
        "p90": float(p90),
        "p99": float(p99),
        "mean": float(millis.mean()),
        "min": float(millis.min()),
        "max": float(millis.max()),
    }
