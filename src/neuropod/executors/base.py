"""Where a model runs: one small interface for in-process, worker and remote.

The :class:`~neuropod.loader.Neuropod` object holds an executor and never
knows which kind. Executors receive inputs already validated against the
spec and return numpy outputs, which the caller validates.
"""

from __future__ import annotations

import abc
from typing import Dict

import numpy as np

__all__ = ["Executor", "TensorDict"]

TensorDict = Dict[str, np.ndarray]


class Executor(abc.ABC):
    @abc.abstractmethod
    def infer(self, inputs: TensorDict) -> TensorDict:
        """Run the model on validated inputs."""

    def close(self) -> None:
        """Release the executor's resources; safe to call twice."""
