"""Where a model runs: one small interface for in-process, worker and remote.

The :class:`~neuropod.loader.Neuropod` object holds an executor and never
knows which kind. Executors receive inputs already validated against the
spec and return numpy outputs, which the caller validates. ``infer`` is the
one method to write; the others have defaults that suit an executor with no
memory of its own to offer and nothing that can die.
"""

from __future__ import annotations

import abc
from typing import Any, Dict, Sequence

import numpy as np

__all__ = ["Executor", "TensorDict"]

TensorDict = Dict[str, np.ndarray]


class Executor(abc.ABC):
    """Where one model runs; :class:`~neuropod.loader.Neuropod` calls it and never knows which kind it holds."""

    @abc.abstractmethod
    def infer(self, inputs: TensorDict) -> TensorDict:
        """Run the model on validated inputs."""

    def allocate(self, name: str, shape: Sequence[int], dtype: Any) -> np.ndarray:
        """An uninitialised array for input ``name``, placed where the model reads it without a copy.

        The default is ``np.empty``; the out-of-process executor places it in shared memory.
        """
        return np.empty(tuple(shape), dtype)

    def seal(self, name: str, array: np.ndarray) -> np.ndarray:
        """Start moving input ``array`` to the model ahead of ``infer``; return what to pass in its place.

        The default has nothing to move and returns ``array``.
        """
        return array

    def ready(self) -> bool:
        """Whether a call can be served now.

        A model server reports this as the model's readiness and refuses calls
        (UNAVAILABLE) while it is False. An executor whose worker has died
        returns False until it has a replacement, then True again. To get one,
        the server calls :meth:`restart` every second while ``ready()`` is
        False. Executors that cannot lose their model keep this default.
        """
        return True

    def restart(self) -> None:
        """Replace what died (workers) so that :meth:`ready` turns True again; the default has nothing to replace."""

    def close(self) -> None:
        """Release the executor's resources; safe to call twice."""
