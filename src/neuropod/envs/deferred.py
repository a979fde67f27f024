"""Serving a model whose environment is still being built.

A model server loads its models before it listens. A model that needs an
environment built first (minutes, for a large framework) would keep the whole
server from answering, even its liveness probe. :func:`load_for_serving`
returns at once for such a model: its executor is a stand-in that reports
not ready (so the server's readiness says "not yet") and refuses calls while
the environment is built and the model loaded in a background thread; from
then on it hands every call to the real executor.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Optional, Sequence

import numpy as np

from ..errors import ModelNotReadyError
from ..executors.base import Executor, TensorDict
from ..package import open_package
from ..urls import is_model_url

__all__ = ["load_for_serving", "PendingEnvironmentExecutor"]

logger = logging.getLogger("neuropod.envs")


class PendingEnvironmentExecutor(Executor):
    """Loads ``path`` with ``options`` in a background thread (building its environment first).

    Not ready until the model is loaded; calls before then raise
    :class:`~neuropod.errors.ModelNotReadyError` saying why.
    """

    def __init__(self, path: str, options: dict, model_name: str, need: str) -> None:
        self._path = path
        self._options = options
        self._model_name = model_name
        self._need = need
        self._lock = threading.Lock()
        self._model: Any = None
        self._error: Optional[BaseException] = None
        self._closed = False
        self._thread = threading.Thread(target=self._load, name=f"neuropod-env-{model_name}", daemon=True)
        self._thread.start()

    def _load(self) -> None:
        from ..loader import load_neuropod

        try:
            model = load_neuropod(self._path, **self._options)
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


def load_for_serving(path: Any, **options: Any) -> Any:
    """``load_neuropod(path, **options)``, except that a model whose environment must be built first
    comes back at once, not ready until it is built and loaded (see the module doc)."""
    from ..loader import Neuropod, load_neuropod

    text = str(path)
    if options.get("environment") is None and "python_executable" not in options and not is_model_url(text):
        package = open_package(text, verify=options.get("verify_manifest", True))
        from . import _may_need_another

        if _may_need_another(package):
            from .need import need_of
            from .select import find_environment

            need = need_of(package)
            if need.asks_for_anything and need.problems_here() and find_environment(need) is None:
                config = package.config
                logger.info("model %s: building its environment (%s) before loading it", config.name, need.describe())
                executor = PendingEnvironmentExecutor(text, options, config.name, need.describe())
                return Neuropod(
                    executor,
                    config.name,
                    config.platform,
                    config.problem,
                    package=package,
                    validate=options.get("validate", True),
                )
    return load_neuropod(path, **options)
