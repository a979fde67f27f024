"""The JAX backend: a ``jax.export`` program deserialised and called.

``0/data/model.jax_exported`` holds the serialised ``Exported`` (StableHLO);
``0/data/params.npz`` its parameters (``p0``, ``p1`` ... in pytree-leaf
order), put on the device once at load. ``0/config.json`` says whether the
program was exported with 64-bit types on (``enable_x64``).

Copies: inputs of 64 KiB and more go in through ``jax.device_put``, which on
the CPU shares the numpy buffer when it is 64-byte aligned (XLA's rule) and
copies it otherwise; numpy aligns large arrays to 16 bytes only, so plain
numpy inputs are copied once and aligned ones (e.g. shared memory) are not.
Smaller inputs are handed to ``exported.call`` as they are, which is cheaper
per call than any explicit transfer. Outputs come back with ``np.asarray``, a
read-only view of JAX's CPU buffer (no copy).

A package exported with 64-bit types (``enable_x64``) is called inside
``jax.enable_x64(True)``, scoped to the call so other JAX users in the
process are not affected; others are called without touching the setting.
"""

from __future__ import annotations

import importlib
from typing import Any, Dict, List, Set

import jax
import numpy as np
from jax import export

from ...errors import InferenceError, PackageError
from ...package import Package, layout
from ..base import Backend, BackendOptions, TensorDict, model_failure
from ..devices import pick_gpu

__all__ = ["JaxBackend", "EXPORTED_FILE", "PARAMS_FILE", "choose_jax_device", "x64_scope"]

EXPORTED_FILE = layout.JAX_EXPORTED
PARAMS_FILE = layout.JAX_PARAMS
#: Below this size an input goes to ``exported.call`` as numpy; above, through ``jax.device_put``.
_SMALL_BYTES = 64 * 1024


def x64_scope(enabled: bool) -> Any:
    """A context manager turning JAX's 64-bit types on or off (``jax.experimental`` before jax 0.7)."""
    scope: Any = getattr(jax, "enable_x64", None)
    if scope is None:
        scope = importlib.import_module("jax.experimental").enable_x64
    return scope(enabled)


def choose_jax_device(visible_gpu: Any) -> Any:
    """The ``visible_gpu``-th GPU JAX sees, else the first CPU device (warning if a GPU was asked for)."""
    gpus: List[Any] = []
    if visible_gpu is not None:
        try:
            gpus = jax.devices("gpu")
        except RuntimeError:  # no GPU backend in this jaxlib
            pass
    gpu = pick_gpu(visible_gpu, len(gpus), "jax")
    return jax.devices("cpu")[0] if gpu is None else gpus[gpu]


class JaxBackend(Backend):
    """Runs ``exported.call(params, inputs)`` on one device.

    XLA sizes its CPU thread pool once per process, so ``intra_op_threads``
    and ``inter_op_threads`` are accepted and have no effect here.
    """

    def __init__(self, package: Package, options: BackendOptions) -> None:
        super().__init__(package, options)
        settings = package.backend_config()
        self._x64 = bool(settings.get("enable_x64", False))
        path = package.data_dir / EXPORTED_FILE
        if not path.is_file():
            raise PackageError(f"{path}: jax.export program file is missing")
        try:
            self.exported: Any = export.deserialize(bytearray(path.read_bytes()))
        except Exception as exc:  # jax raises ValueError / flatbuffer errors for a bad or newer file
            raise PackageError(f"{path}: jax {jax.__version__} cannot deserialise this program: {exc}") from exc
        self.device = choose_jax_device(options.visible_gpu)
        platform = "cuda" if self.device.platform == "gpu" else self.device.platform
        if platform not in self.exported.platforms:
            raise PackageError(
                f"{path}: the program was exported for {list(self.exported.platforms)}, not for {platform!r}; "
                "package it again with platforms= naming it"
            )
        self._on_cpu = self.device.platform == "cpu"
        self.params = self._load_params(
            package, int(settings.get("param_count", 0)), set(settings.get("bfloat16_params", ()))
        )
        self._output_names = [s.name for s in package.config.output_spec]
        self._input_names = [s.name for s in package.config.input_spec]

    def _load_params(self, package: Package, count: int, bfloat16_leaves: Set[int]) -> List[Any]:
        path = package.data_dir / PARAMS_FILE
        if count == 0:
            return []
        try:
            with np.load(path, allow_pickle=False) as stored:
                leaves = [stored[f"p{i}"] for i in range(count)]
            # .npz cannot hold bfloat16: those leaves were stored as their uint16 bits.
            leaves = [leaf.view(jax.numpy.bfloat16) if i in bfloat16_leaves else leaf for i, leaf in enumerate(leaves)]
        except (OSError, KeyError, ValueError) as exc:
            raise PackageError(f"{path}: cannot read {count} parameter arrays: {exc}") from exc
        with x64_scope(self._x64):
            return [jax.device_put(leaf, self.device) for leaf in leaves]

    def _to_jax(self, array: np.ndarray) -> Any:
        if array.nbytes < _SMALL_BYTES and self._on_cpu:
            return array  # exported.call converts small arrays faster than an explicit device_put
        return jax.device_put(array, self.device)

    def infer(self, inputs: TensorDict) -> TensorDict:
        try:
            if self._x64:
                with x64_scope(True):
                    result = self.exported.call(self.params, {k: self._to_jax(v) for k, v in inputs.items()})
                    return self._outputs_to_numpy(result)
            result = self.exported.call(self.params, {k: self._to_jax(v) for k, v in inputs.items()})
            return self._outputs_to_numpy(result)
        except InferenceError:
            raise
        except Exception as exc:  # shape-assertion and XLA errors
            raise model_failure("JAX", self.package.config.name, exc, inputs=inputs) from exc

    def _outputs_to_numpy(self, result: Any) -> TensorDict:
        if not isinstance(result, dict):
            raise InferenceError(f"the program returned {type(result).__name__}, expected a dict of arrays")
        outputs: Dict[str, np.ndarray] = {}
        for name, value in result.items():
            outputs[str(name)] = np.asarray(value)
        return outputs

    def close(self) -> None:
        self.exported = None
        self.params = []
