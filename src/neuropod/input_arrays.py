"""What ``infer`` accepts as an input: numpy arrays, and the frameworks' own tensors turned into them.

A torch tensor, a JAX array or a TensorFlow tensor becomes a numpy array that
shares its memory where the framework allows it (a CPU tensor); one that
cannot be viewed from numpy (a tensor on a GPU, a sparse tensor, a symbolic
graph tensor) is refused with an :class:`InputValidationError` naming the
input and saying what to do. Anything else that is not a numpy array, an
object that only looks like one included, is refused the same way. No
framework is imported here: a tensor is recognised by its type's module.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping

import numpy as np

from .errors import InputValidationError

__all__ = ["as_numpy_inputs"]


def as_numpy_inputs(inputs: Mapping[Any, Any]) -> Dict[str, np.ndarray]:
    """``inputs`` with string names and numpy values (the dict itself when it already is one).

    Raises:
        InputValidationError: a name that is not a string (or not valid
            Unicode text), or a value that is neither a numpy array nor a
            tensor that converts to one.
    """
    converted: Dict[str, np.ndarray] = {}
    changed = type(inputs) is not dict
    for name, value in inputs.items():
        if type(name) is not str or not name.isascii():
            _check_name(name)
        if type(value) is not np.ndarray:
            value = _to_numpy(name, value)
            changed = True
        converted[name] = value
    return converted if changed else inputs  # type: ignore[return-value]


def _check_name(name: Any) -> None:
    if not isinstance(name, str):
        raise InputValidationError(f"inputs: a name must be a string, got {type(name).__name__} {name!r}")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InputValidationError(f"input {name!r}: the name is not valid Unicode text ({exc.reason})") from None


def _to_numpy(name: str, value: Any) -> np.ndarray:
    if isinstance(value, np.ndarray):  # a subclass (np.memmap ...) is an array as it is
        return value
    if isinstance(value, np.generic):  # a numpy scalar: a rank-0 array
        return np.asarray(value)
    framework = type(value).__module__.partition(".")[0]
    if framework == "torch":
        return _from_torch(name, value)
    if framework in ("jax", "jaxlib"):
        return _from_jax(name, value)
    if framework == "tensorflow":
        return _from_tensorflow(name, value)
    what = type(value).__qualname__
    if hasattr(value, "dtype") and hasattr(value, "shape"):
        what = f"{type(value).__module__}.{what}, which has dtype and shape but is not a numpy array"
    raise InputValidationError(
        f"input {name!r}: expected a numpy array (or a torch, JAX or TensorFlow tensor), got {what}"
    )


def _from_torch(name: str, tensor: Any) -> np.ndarray:
    if not hasattr(tensor, "numpy") or not hasattr(tensor, "device"):
        raise InputValidationError(f"input {name!r}: expected a tensor, got torch object {type(tensor).__qualname__}")
    if tensor.device.type != "cpu":
        raise InputValidationError(
            f"input {name!r}: a torch tensor on {tensor.device} cannot be viewed from numpy; "
            "move it to the CPU first (tensor.cpu())"
        )
    if str(tensor.layout) != "torch.strided":
        raise InputValidationError(
            f"input {name!r}: a {tensor.layout} tensor is not a dense array; convert it with .to_dense()"
        )
    tensor = tensor.detach()  # a view: numpy() refuses tensors that require grad
    try:
        if str(tensor.dtype) == "torch.bfloat16":  # numpy has no bfloat16: view the same bits as ml_dtypes'
            import ml_dtypes

            return tensor.view(_torch_int16(tensor)).numpy().view(ml_dtypes.bfloat16)  # type: ignore[no-any-return]
        return tensor.numpy()  # type: ignore[no-any-return]
    except (RuntimeError, TypeError) as exc:
        raise InputValidationError(
            f"input {name!r}: a torch tensor of dtype {tensor.dtype} cannot be viewed from numpy: {exc}"
        ) from None


def _torch_int16(tensor: Any) -> Any:
    import torch  # already imported: the caller holds a torch tensor

    return torch.int16


def _from_jax(name: str, array: Any) -> np.ndarray:
    devices = getattr(array, "devices", None)
    platforms = {device.platform for device in devices()} if callable(devices) else {"cpu"}
    if platforms != {"cpu"}:
        raise InputValidationError(
            f"input {name!r}: a JAX array on {', '.join(sorted(platforms))} cannot be viewed from numpy; "
            "move it to the CPU first (jax.device_get)"
        )
    try:
        return np.from_dlpack(array)  # no copy
    except (BufferError, TypeError, RuntimeError, ValueError):
        pass  # dtypes DLPack does not carry into numpy (bfloat16): JAX's own conversion
    try:
        return np.asarray(array)
    except Exception as exc:  # a tracer inside jit, a deleted buffer ...
        raise InputValidationError(f"input {name!r}: a JAX {type(array).__name__} has no value here: {exc}") from None


def _from_tensorflow(name: str, tensor: Any) -> np.ndarray:
    to_numpy = getattr(tensor, "numpy", None)
    if to_numpy is None:
        raise InputValidationError(
            f"input {name!r}: a TensorFlow {type(tensor).__name__} has no value outside its graph; "
            "pass an eager tensor or a numpy array"
        )
    try:
        array = to_numpy()  # a CPU tensor's memory, not a copy
    except Exception as exc:  # a symbolic tensor inside tf.function ...
        raise InputValidationError(f"input {name!r}: a TensorFlow tensor has no value here: {exc}") from None
    if not isinstance(array, np.ndarray):
        array = np.asarray(array)
    if array.dtype == object:  # tf.string: bytes objects; the string check decodes them
        array = array.astype(np.bytes_)
    return array  # type: ignore[no-any-return]
