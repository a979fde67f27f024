"""The placeholder backend: random outputs of the declared dtypes and shapes.

Needs no framework, so it also stands in for a real model in tests of
everything above the backend (out-of-process workers, the server, the CLI).
``0/config.json`` holds ``{"seed": int, "free_dim_size": int}``, and
``"inputs_optional": true`` for a stand-in that runs without its inputs (the
original's ``randomify_neuropod`` packages did).
"""

from __future__ import annotations

import math
from typing import Dict, Sequence

import numpy as np

from ...errors import InferenceError, PackageError
from ...package import Package, layout
from ...spec import TensorSpec, numpy_dtype
from ..base import Backend, BackendOptions, TensorDict

__all__ = ["PlaceholderBackend", "DEFAULT_FREE_DIM_SIZE"]

#: Size given to a ``None`` or an output-only symbol.
DEFAULT_FREE_DIM_SIZE = 2
#: Bounds of the settings in ``0/config.json``, checked at load, and of one output's size, checked per call.
MAX_SEED = 2**64 - 1
MAX_FREE_DIM_SIZE = 1 << 20
MAX_OUTPUT_ELEMENTS = 1 << 28


def _setting(settings: Dict[str, object], key: str, default: int, largest: int, where: object) -> int:
    value = settings.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= largest:
        raise PackageError(f"{where}: field {key!r}: expected an int from 0 to {largest}, got {value!r}")
    return value


_WORDS = np.array(["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"])


class PlaceholderBackend(Backend):
    def __init__(self, package: Package, options: BackendOptions) -> None:
        super().__init__(package, options)
        settings = package.backend_config()
        where = package.root / layout.BACKEND_CONFIG
        self.seed = _setting(settings, "seed", 0, MAX_SEED, where)
        self.free_dim_size = _setting(settings, "free_dim_size", DEFAULT_FREE_DIM_SIZE, MAX_FREE_DIM_SIZE, where)
        optional = settings.get("inputs_optional", False)
        if not isinstance(optional, bool):
            raise PackageError(f"{where}: field 'inputs_optional': expected true or false, got {optional!r}")
        self._inputs_optional = optional
        self._inputs = package.config.input_spec
        self._outputs = package.config.output_spec

    def required_inputs(self) -> Sequence[str]:
        return () if self._inputs_optional else super().required_inputs()

    def infer(self, inputs: TensorDict) -> TensorDict:
        symbols: Dict[str, int] = {}
        for spec in self._inputs:
            array = inputs.get(spec.name)
            if array is not None:
                for dim, size in zip(spec.shape, array.shape):
                    if isinstance(dim, str):
                        symbols.setdefault(dim, size)
        # A fresh generator per call: the same seed and input shapes give the same outputs.
        rng = np.random.default_rng(self.seed)
        return {spec.name: self._random(spec, symbols, rng) for spec in self._outputs}

    def _random(self, spec: TensorSpec, symbols: Dict[str, int], rng: np.random.Generator) -> np.ndarray:
        shape = []
        for dim in spec.shape:
            if isinstance(dim, int):
                shape.append(dim)
            elif isinstance(dim, str):
                shape.append(symbols.setdefault(dim, self.free_dim_size))
            else:
                shape.append(self.free_dim_size)
        if math.prod(shape) > MAX_OUTPUT_ELEMENTS:
            raise InferenceError(
                f"placeholder output {spec.name!r}: shape {shape} has more than {MAX_OUTPUT_ELEMENTS} elements"
            )
        dtype = spec.dtype
        if dtype == "string":
            return rng.choice(_WORDS, size=shape)
        if dtype == "bool":
            return rng.random(shape) < 0.5
        if dtype.startswith(("int", "uint")):
            return rng.integers(0, 10, size=shape).astype(dtype)
        return rng.standard_normal(shape).astype(numpy_dtype(dtype))
