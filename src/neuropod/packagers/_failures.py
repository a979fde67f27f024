"""A framework's exception while packaging, as a ``PackageError`` that says what to do next.

Every packager lets only :class:`~neuropod.errors.NeuropodError` subclasses
through: a framework's own exception (``OSError`` from ``torch.jit.script``,
``TypeError`` from a TensorFlow trace, ...) becomes a ``PackageError`` whose
first line says what failed and why (the framework's own message, first line),
whose last line says what to do next, and which chains the framework's
exception (``raise ... from exc``) for its full traceback.
"""

from __future__ import annotations

import sys
from typing import Any, Iterable

from ..errors import PackageError

__all__ = ["framework_failure", "is_keras_model", "trace_hint"]


def framework_failure(what: str, exc: BaseException, next_step: str) -> PackageError:
    """A ``PackageError``: what failed, the framework's first line, and the next step; raise it ``from exc``."""
    message = str(exc).strip()
    first, _, rest = message.partition("\n")
    text = f"{what}: {type(exc).__name__}: {first}" if first else f"{what}: {type(exc).__name__}"
    if rest.strip():
        text += "\n  (the framework's full message and traceback are chained below)"
    return PackageError(f"{text}\nnext step: {next_step}")


def trace_hint(input_names: Iterable[str]) -> str:
    """How to trace a module with the test inputs instead of scripting it."""
    names = list(input_names)
    kwargs = ", ".join(f"{name!r}: torch.as_tensor(test_input_data[{name!r}])" for name in names) or "..."
    return (
        "trace it instead, with the test inputs, and pass the traced module: "
        f"module=torch.jit.trace(module, example_kwarg_inputs={{{kwargs}}}, strict=False) "
        "(strict=False lets it return a dict); "
        "or package it with torch.export (create_torch_export_neuropod)"
    )


def is_keras_model(model: Any) -> bool:
    """Whether ``model`` is a Keras model (without importing Keras: a Keras model means it is imported)."""
    keras = sys.modules.get("keras")
    model_class = getattr(keras, "Model", None)
    if model_class is not None and isinstance(model, model_class):
        return True
    tf_keras = sys.modules.get("tf_keras")  # the Keras 2 package TensorFlow may use
    return tf_keras is not None and isinstance(model, getattr(tf_keras, "Model", ()))
