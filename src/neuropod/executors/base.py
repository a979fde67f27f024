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

    def ready(self) -> bool:
        """Whether a call can be served now.

        A model server reports this as the model's readiness and refuses calls
        (UNAVAILABLE) while it is False. An executor whose worker has died
        returns False until it has a replacement, then True again. To get one,
        the server calls the executor's ``restart()`` method, if it has one,
        every second while ``ready()`` is False. Executors that cannot lose
        their model keep this default.
        """
        return True

    def close(self) -> None:
        """Release the executor's resources; safe to call twice."""
