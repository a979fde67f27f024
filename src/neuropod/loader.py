"""``load_neuropod`` and the uniform :class:`Neuropod` object."""

from __future__ import annotations

import os
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np

from .backends import BackendOptions
from .errors import InputValidationError
from .executors.base import Executor
from .package import Package, open_package
from .spec import ProblemDefinition, SpecValidator

__all__ = ["Neuropod", "load_neuropod", "REMOTE_SCHEMES"]

TensorDict = Dict[str, np.ndarray]

#: URL schemes that load a model served by a remote server.
REMOTE_SCHEMES = ("grpc://", "grpcs://", "http://", "https://")


class Neuropod:
    """A loaded model: the same API whatever its framework and wherever it runs.

    Attributes:
        name: the model name from the package.
        platform: the backend platform (``torchscript``, ``python`` ...).
        problem: the :class:`~neuropod.spec.ProblemDefinition` it implements.
        package: the opened package, or None for a remote model.
    """

    def __init__(
        self,
        executor: Executor,
        name: str,
        platform: str,
        problem: ProblemDefinition,
        package: Optional[Package] = None,
        validate: bool = True,
    ) -> None:
        self._executor = executor
        self.name = name
        self.platform = platform
        self.problem = problem
        self.package = package
        self.validate = validate
        self._input_validator = SpecValidator(problem.inputs, "input")
        self._output_validator = SpecValidator(problem.outputs, "output")
        self._string_inputs = tuple(s.name for s in problem.inputs if s.dtype == "string")
        self._closed = False

    @property
    def inputs(self) -> List[Dict[str, Any]]:
        """Input specs as the original's ``{"name", "dtype", "shape"}`` dicts."""
        return [s.to_dict() for s in self.problem.inputs]

    @property
    def outputs(self) -> List[Dict[str, Any]]:
        """Output specs as the original's ``{"name", "dtype", "shape"}`` dicts."""
        return [s.to_dict() for s in self.problem.outputs]

    @property
    def executor(self) -> Executor:
        return self._executor

    def infer(self, inputs: Mapping[str, np.ndarray]) -> TensorDict:
        """Run the model.

        Args:
            inputs: a dict of input name to numpy array. Every input is
                optional; string inputs may be unicode or bytes arrays.

        Returns:
            A dict of output name to numpy array; strings as unicode arrays.

        Raises:
            InputValidationError: an unknown name, wrong dtype, rank, size or
                inconsistent symbol (names the tensor, expected and actual).
            OutputValidationError: the model's outputs break the spec.
            InferenceError: the model failed (or its worker/server did).
        """
        if self._closed:
            raise InputValidationError(f"model {self.name!r} is closed")
        if type(inputs) is not dict and not isinstance(inputs, Mapping):
            raise InputValidationError(f"inputs: expected a dict of name -> numpy array, got {type(inputs).__name__}")
        bindings = self._input_validator.validate(inputs) if self.validate else None
        for name in self._string_inputs:
            array = inputs.get(name)
            if array is not None and array.dtype.kind == "S":
                try:
                    decoded = np.char.decode(array, "utf-8")
                except UnicodeDecodeError as exc:
                    raise InputValidationError(f"input {name!r}: bytes are not valid UTF-8 ({exc.reason})") from None
                inputs = {**inputs, name: decoded}
        outputs = self._executor.infer(inputs if type(inputs) is dict else dict(inputs))
        if self.validate:
            self._output_validator.validate(outputs, bindings)
        return outputs

    def allocate(self, name: str, shape: Sequence[int], dtype: Any = None) -> np.ndarray:
        """An uninitialised array for input ``name``, placed where the model reads it without a copy.

        For an out-of-process model it lives in shared memory: fill it and pass
        it to :meth:`infer`. Elsewhere it is ``np.empty``.

        Args:
            name: the input it is for (its spec gives the default dtype).
            shape: its shape.
            dtype: overrides the spec's dtype.
        """
        if dtype is None:
            spec = next((s for s in self.problem.inputs if s.name == name), None)
            if spec is None:
                raise InputValidationError(f"input {name!r} is not in the spec")
            dtype = spec.numpy_dtype
        allocate = getattr(self._executor, "allocate", None)
        return allocate(name, shape, dtype) if allocate is not None else np.empty(shape, dtype)

    def seal(self, name: str, array: np.ndarray) -> np.ndarray:
        """Start moving input ``name`` to the model now, ahead of :meth:`infer`.

        Returns the array to pass to ``infer`` in its place (an out-of-process
        model copies it into shared memory in a background thread; other
        executors return ``array`` itself). Leave ``array`` unchanged and do
        not read the returned array until ``infer`` returns.
        """
        seal = getattr(self._executor, "seal", None)
        return seal(name, array) if seal is not None else array

    def close(self) -> None:
        """Release the model (and its worker or connection). Safe to call twice."""
        if not self._closed:
            self._closed = True
            self._executor.close()

    def __enter__(self) -> Neuropod:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Neuropod {self.name!r} platform={self.platform!r} executor={type(self._executor).__name__}>"


def load_neuropod(
    neuropod_path: Union[str, os.PathLike[str]],
    visible_gpu: Optional[int] = None,
    *,
    use_ope: bool = False,
    verify_manifest: bool = True,
    validate: bool = True,
    intra_op_threads: Optional[int] = None,
    inter_op_threads: Optional[int] = None,
    **options: Any,
) -> Neuropod:
    """Load a neuropod package (directory, zip or server URL) and return a :class:`Neuropod`.

    Args:
        neuropod_path: a package directory or zip, or ``grpc://host:port/model``
            / ``http://host:port/model`` for a model on a KServe v2 server.
        visible_gpu: the GPU to run on; None runs on the CPU.
        use_ope: run the model in a worker process over shared memory.
        verify_manifest: check every package file against its sha256 manifest.
        validate: check inputs and outputs against the spec on every call.
        intra_op_threads: threads inside one operator, for backends that have them.
        inter_op_threads: threads across operators, for backends that have them.
        **options: backend- or executor-specific options.
    """
    path_text = os.fspath(neuropod_path)
    if isinstance(path_text, str) and path_text.startswith(REMOTE_SCHEMES):
        from .executors.remote import load_remote  # imported here: needs the serve extra

        return load_remote(path_text, validate=validate, **options)
    package = open_package(path_text, verify=verify_manifest)
    backend_options = BackendOptions(
        visible_gpu=visible_gpu,
        intra_op_threads=intra_op_threads,
        inter_op_threads=inter_op_threads,
        extra=options,
    )
    executor: Executor
    if use_ope:
        from .executors.ope import OutOfProcessExecutor

        executor = OutOfProcessExecutor(package, backend_options)
    else:
        from .executors.inprocess import InProcessExecutor

        executor = InProcessExecutor(package, backend_options)
    config = package.config
    return Neuropod(executor, config.name, config.platform, config.problem, package=package, validate=validate)
