"""The backend contract: load a package's artifact, run it, close it.

A backend converts between numpy arrays and its framework's tensors, without
copies wherever the framework allows. Inputs it receives were already
validated against the spec; string inputs arrive as numpy unicode arrays.
It returns numpy arrays (strings as unicode arrays); the caller validates them.
"""

from __future__ import annotations

import abc
import dataclasses
import json
import re
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Sequence

import numpy as np

from ..errors import InferenceError, InputValidationError, OptionError
from ..options import Options, optional_non_negative_int, optional_positive_int, setting
from ..package import Package

__all__ = [
    "Backend",
    "BackendOptions",
    "TensorDict",
    "as_string_array",
    "feeds_by_model_name",
    "gpu_unavailable_warning",
    "missing_input_error",
    "model_failure",
    "cause_line",
]

TensorDict = Dict[str, np.ndarray]


@dataclass(frozen=True)
class BackendOptions(Options):
    """Settings every backend honours where its framework has them (what runs the model).

    ``extra`` is not an option itself: it holds the backend's own options
    (declared by the backend, see :func:`neuropod.backends.backend_option_table`).
    """

    REMOTE = "the server chooses the device and threads of its models (neuropod serve and its model settings)"

    visible_gpu: Optional[int] = setting(
        None, check=optional_non_negative_int, doc="the GPU to run on; None runs on the CPU"
    )
    intra_op_threads: Optional[int] = setting(
        None, check=optional_positive_int, doc="threads inside one operator, for backends that have them"
    )
    inter_op_threads: Optional[int] = setting(
        None, check=optional_positive_int, doc="threads across operators, for backends that have them"
    )
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        """These options as JSON, to hand to a worker process (:meth:`from_json` reads them back).

        Raises:
            OptionError: a backend option is not JSON-serialisable.
        """
        try:
            return json.dumps(dataclasses.asdict(self))
        except (TypeError, ValueError) as exc:
            raise OptionError(f"backend options for a worker must be JSON-serialisable: {exc}") from None

    @classmethod
    def from_json(cls, text: str) -> BackendOptions:
        return cls(**json.loads(text))


class Backend(abc.ABC):
    """Runs one package's model. Subclasses load in ``__init__``."""

    def __init__(self, package: Package, options: BackendOptions) -> None:
        self.package = package
        self.options = options

    @abc.abstractmethod
    def infer(self, inputs: TensorDict) -> TensorDict:
        """Run the model on validated inputs; return numpy outputs."""

    def required_inputs(self) -> Sequence[str]:
        """The inputs the model cannot run without, asked once at load time.

        The rule (the original's): an input is optional where the model can
        run without it. The in-process executor refuses a call that leaves out
        a required input before the framework is called. The default is every
        input of the spec, which graph frameworks need (ONNX, JAX,
        torch.export, Keras, TF2 signatures) and the placeholder asks for as a
        stand-in for a model not written yet; backends whose models can go
        without some inputs say which they need.
        """
        return [spec.name for spec in self.package.config.input_spec]

    def close(self) -> None:
        """Release the model. Backends holding external resources override this."""


def as_string_array(values: Any) -> np.ndarray:
    """A numpy unicode array from a list of str/bytes (possibly nested) or an array."""
    array = np.asarray(values)
    if array.dtype.kind == "S":
        return np.char.decode(array, "utf-8")
    if array.dtype.kind == "O":
        flat = [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in array.reshape(-1)]
        return np.array(flat, dtype="U").reshape(array.shape)
    if array.size == 0 and array.dtype.kind != "U":
        return array.astype("U")
    return array


def missing_input_error(missing: str, required: Sequence[str]) -> InputValidationError:
    """The error for a call that leaves out ``missing``, one of the ``required`` inputs."""
    needed = ", ".join(repr(name) for name in required)
    return InputValidationError(
        f"input {missing!r} was not given; this model cannot run without it (it needs {needed})"
    )


def feeds_by_model_name(inputs: Mapping[str, Any], names: Mapping[str, str], model_kind: str) -> Dict[str, Any]:
    """Inputs renamed from spec names to the model's own names."""
    try:
        return {names[spec_name]: value for spec_name, value in inputs.items()}
    except KeyError as exc:
        raise InputValidationError(f"input {exc.args[0]!r} is not in the model's input spec") from None


def gpu_unavailable_warning(framework: str, visible_gpu: int) -> None:
    warnings.warn(
        f"visible_gpu={visible_gpu} was asked for, but {framework} sees no usable GPU; running on the CPU",
        RuntimeWarning,
        stacklevel=3,
    )


# "RuntimeError: index out of range in self": the line a framework's traceback-shaped message ends its cause with.
_ERROR_LINE = re.compile(r"^[A-Za-z_][\w.]*(?:Error|Exception): \S")


def cause_line(message: str) -> str:
    """The one line of a framework's error message that says what went wrong.

    TorchScript puts its interpreter's traceback first and the cause on the
    last ``SomethingError: ...`` line; TensorFlow puts headers (``Graph
    execution error:``, ``Detected at node ...:``) and indented frames around
    it. The cause is the last ``...Error: ...`` line, else the first line that
    is neither a header, a frame nor a node list, else the first line.
    """
    lines = [line.rstrip() for line in message.strip().splitlines() if line.strip()]
    if len(lines) <= 1:
        return lines[0] if lines else ""
    errors = [line.strip() for line in lines if _ERROR_LINE.match(line.strip())]
    if errors:
        return errors[-1]
    for line in lines:
        if not (line[0].isspace() or line.endswith(":") or line.startswith(("[[", "Traceback", "File "))):
            return line
    return lines[0].strip()


def model_failure(
    kind: str,
    model_name: str,
    exc: BaseException,
    message: Optional[str] = None,
    inputs: Optional[Mapping[str, Any]] = None,
) -> InferenceError:
    """``InferenceError("<kind> model '<name>' failed: <the framework's cause line>")``; raise it ``from exc``.

    One line: the framework's full message and traceback stay on the chained
    exception (``neuropod --verbose`` prints them; an out-of-process call
    chains the worker's).

    Args:
        kind: the framework's name as users know it (``TorchScript``, ``ONNX`` ...).
        model_name: the package's model name.
        exc: the framework's exception.
        message: its text where ``str(exc)`` is not it (TensorFlow's ``OpError.message``).
        inputs: the call's inputs: an empty one is named, with the limit most models meet on it.
    """
    cause = cause_line(str(exc) if message is None else message) or type(exc).__name__
    if not _ERROR_LINE.match(cause) and type(exc).__name__ not in ("RuntimeError", "Exception"):
        cause = f"{type(exc).__name__}: {cause}"  # an IndexError's text alone hides what it was
    empty = next(((n, a.shape) for n, a in (inputs or {}).items() if 0 in getattr(a, "shape", ())), None)
    if empty is not None:
        cause += (
            f" (input {empty[0]!r} is empty, shape {tuple(empty[1])}: {_EMPTY_LIMITS.get(kind, _EMPTY_LIMIT)}; "
            "skip empty batches; see docs/frameworks.md#empty-batches)"
        )
    return InferenceError(f"{kind} model {model_name!r} failed: {cause}")


#: What a framework cannot do with an empty tensor that models commonly ask of it.
_EMPTY_LIMIT = "models often reshape with -1, which no framework can size from an empty tensor"
_EMPTY_LIMITS = {
    "TorchScript": "torch cannot size a -1 dimension of a reshape/view of an empty tensor",
    "torch.export": "torch cannot size a -1 dimension of a reshape/view of an empty tensor",
    "JAX": "jax.numpy cannot size a -1 dimension of a reshape of an empty array",
    "ONNX": "an ONNX Reshape cannot size a -1 dimension of an empty tensor",
}
