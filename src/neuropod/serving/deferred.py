"""Serving a model whose environment is still being built.

A model server loads its models before it listens. A model whose plan needs
an environment built first (:attr:`neuropod.plan.Plan.environment_to_build`;
minutes, for a large framework) would keep the whole server from answering,
even its liveness probe. :func:`load_for_serving` returns at once for such a
model: its executor is a stand-in that reports not ready (so the server's
readiness says "not yet") and refuses calls while the environment is built
and the model loaded in a background thread; from then on it hands every call
to the real executor. The plan is carried out as made, never decided again.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any, Optional, Sequence

import numpy as np

from ..errors import ModelNotReadyError
from ..executors.base import Executor, TensorDict
from ..plan import Plan

if TYPE_CHECKING:
    from ..loader import Neuropod

__all__ = ["load_for_serving", "PendingEnvironmentExecutor"]

logger = logging.getLogger("neuropod.envs")  # its messages are about environments being built


class PendingEnvironmentExecutor(Executor):
    """Carries out ``plan`` in a background thread (building its environment first).

    Not ready until the model is loaded; calls before then raise
    :class:`~neuropod.errors.ModelNotReadyError` saying why.
    """

    def __init__(self, plan: Plan, model_name: str, need: str) -> None:
        self._plan = plan
        self._model_name = model_name
        self._need = need
        self._lock = threading.Lock()
        self._model: Any = None
        self._error: Optional[BaseException] = None
        self._closed = False
        self._thread = threading.Thread(target=self._load, name=f"neuropod-env-{model_name}", daemon=True)
        self._thread.start()

    def _load(self) -> None:
        from ..loader import load_planned

        try:
            model = load_planned(self._plan)
        except BaseException as exc:
            logger.error("model %s: its environment (%s) could not be prepared: %s", self._model_name, self._need, exc)
            self._error = exc
            return
        with self._lock:
            if self._closed:
                model.close()
            else:
                self._model = model
        logger.info("model %s: environment ready; the model is loaded", self._model_name)

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Wait for the background load; True when it finished (loaded or failed)."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def error(self) -> Optional[BaseException]:
        return self._error

    def _inner(self) -> Executor:
        model = self._model
        if model is None:
            if self._error is not None:
                raise ModelNotReadyError(
                    f"model {self._model_name!r}: its environment ({self._need}) could not be prepared: {self._error}"
                )
            raise ModelNotReadyError(f"model {self._model_name!r}: its environment ({self._need}) is being built")
        return model.executor  # type: ignore[no-any-return]

    def infer(self, inputs: TensorDict) -> TensorDict:
        return self._inner().infer(inputs)

    def allocate(self, name: str, shape: Sequence[int], dtype: Any) -> np.ndarray:
        return self._inner().allocate(name, shape, dtype)

    def seal(self, name: str, array: np.ndarray) -> np.ndarray:
        return self._inner().seal(name, array)

    def ready(self) -> bool:
        model = self._model
        return model is not None and bool(model.executor.ready())

    def restart(self) -> None:
        if self._model is not None:
            self._model.executor.restart()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            model, self._model = self._model, None
        if model is not None:
            model.close()


def load_for_serving(plan: Plan) -> Neuropod:
    """``load_planned(plan)``, except that a model whose environment must be built first comes back
    at once, not ready until it is built and loaded (see the module doc)."""
    from ..loader import Neuropod, load_planned

    need = plan.environment_to_build
    if need is None or plan.package is None:
        return load_planned(plan)
    config = plan.package.config
    logger.info("model %s: building its environment (%s) before loading it", config.name, need.describe())
    executor = PendingEnvironmentExecutor(plan, config.name, need.describe())
    return Neuropod(
        executor, config.name, config.platform, config.problem, package=plan.package, validate=plan.call.validate
    )
