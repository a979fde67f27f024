"""``load_neuropod`` and the uniform :class:`Neuropod` object."""

from __future__ import annotations

import logging
import os
import warnings
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from ._original_options import load_installed_backends  # noqa: F401  (the original's name)
from .errors import InputValidationError, ModelClosedError
from .executors.base import Executor
from .input_arrays import as_numpy_inputs
from .package import Package
from .plan import REMOTE, Plan, at_default, make_plan
from .spec import ProblemDefinition, SpecValidator
from .urls import REMOTE_SCHEMES

__all__ = ["Neuropod", "load_neuropod", "load_planned", "REMOTE_SCHEMES"]

logger = logging.getLogger("neuropod")

TensorDict = Dict[str, np.ndarray]


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

    def infer(self, inputs: Mapping[str, Any]) -> TensorDict:
        """Run the model.

        Args:
            inputs: a dict of input name to numpy array (torch tensors, JAX
                arrays and TensorFlow tensors on the CPU are viewed as numpy
                arrays without a copy). An input is optional where the model
                can run without it; string inputs may be unicode or bytes arrays.

        Returns:
            A dict of output name to numpy array; strings as unicode arrays.

        Raises:
            InputValidationError: an unknown name, wrong dtype, rank, size or
                inconsistent symbol (names the tensor, expected and actual).
            OutputValidationError: the model's outputs break the spec.
            InferenceError: the model failed (or its worker/server did).
            ModelClosedError: the model was closed.
        """
        checked, bindings = self._check_inputs(inputs)
        return self._run_checked(checked, bindings)

    # The two halves of ``infer``. The model server calls them apart: it checks each
    # request once, as it arrives, and may run several checked requests as one batch.

    def _check_inputs(self, inputs: Mapping[str, Any]) -> Tuple[TensorDict, Optional[Dict[str, int]]]:
        """Inputs checked against the spec (bytes decoded) and the symbol sizes they bind."""
        if self._closed:
            raise ModelClosedError(f"model {self.name!r} is closed")
        if type(inputs) is not dict and not isinstance(inputs, Mapping):
            raise InputValidationError(f"inputs: expected a dict of name -> numpy array, got {type(inputs).__name__}")
        inputs = as_numpy_inputs(inputs)  # torch/JAX/TF tensors become numpy views; string names only
        bindings = self._input_validator.validate(inputs) if self.validate else None
        for name in self._string_inputs:
            array = inputs.get(name)
            if array is not None and array.dtype.kind == "S":
                try:
                    decoded = np.char.decode(array, "utf-8")
                except UnicodeDecodeError as exc:
                    raise InputValidationError(f"input {name!r}: bytes are not valid UTF-8 ({exc.reason})") from None
                inputs = {**inputs, name: decoded}
        return (inputs if type(inputs) is dict else dict(inputs)), bindings

    def _run_checked(self, inputs: TensorDict, bindings: Optional[Dict[str, int]]) -> TensorDict:
        """Run checked inputs; check the outputs against the spec and the symbol sizes of the inputs."""
        outputs = self._executor.infer(inputs)
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
        return self._executor.allocate(name, shape, dtype)

    def seal(self, name: str, array: np.ndarray) -> np.ndarray:
        """Start moving input ``name`` to the model now, ahead of :meth:`infer`.

        Returns the array to pass to ``infer`` in its place (an out-of-process
        model copies it into shared memory in a background thread; other
        executors return ``array`` itself). Leave ``array`` unchanged and do
        not read the returned array until ``infer`` returns.
        """
        return self._executor.seal(name, array)

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
    use_ope: Optional[bool] = None,
    verify_manifest: bool = True,
    validate: bool = True,
    intra_op_threads: Optional[int] = None,
    inter_op_threads: Optional[int] = None,
    **options: Any,
) -> Neuropod:
    """Load a neuropod package (directory, zip or server URL) and return a :class:`Neuropod`.

    Args:
        neuropod_path: a package directory or zip, or the URL of a model on a
            KServe v2 server: ``grpc://host:port/model``, ``http://host:port/model``
            or ``http://host:port/v2/models/model`` (each optionally ending
            ``/versions/N``; see :mod:`neuropod.urls`).
        visible_gpu: the GPU to run on; None runs on the CPU.
        use_ope: True runs the model in worker processes over shared memory,
            False in this process (or an error where that cannot be). None
            (the default) runs it in this process unless the package needs
            another environment or an isolation level is asked for (or the
            trust policy requires one).
        verify_manifest: check every package file against its sha256 manifest.
        validate: check inputs and outputs against the spec on every call.
        intra_op_threads: threads inside one operator, for backends that have them.
        inter_op_threads: threads across operators, for backends that have them.
        **options: options of the executor (out-of-process: ``workers``,
            ``timeout`` ...; remote: ``token``, ``timeout`` ...) or of the
            backend; ``docs/api.md`` lists them all.

    Raises:
        OptionError: an unknown option, one that does not apply to this way
            of running the model (with the reason), or a wrong value.
    """
    named = {
        "visible_gpu": visible_gpu,
        "use_ope": use_ope,
        "verify_manifest": verify_manifest,
        "validate": validate,
        "intra_op_threads": intra_op_threads,
        "inter_op_threads": inter_op_threads,
    }
    # The signature's keywords count as given only when they differ from their declared
    # defaults: visible_gpu=None says nothing (a Ray replica's GPU may still apply).
    given = {**{name: value for name, value in named.items() if not at_default(name, value)}, **options}
    return load_planned(make_plan(neuropod_path, given))


def load_planned(plan: Plan) -> Neuropod:
    """Load the model as ``plan`` says (see :func:`neuropod.plan.make_plan`).

    An environment the plan found missing is built first (minutes for a large framework).
    """
    if plan.runs == REMOTE:
        return _load_remote(plan)
    package, backend = plan.package, plan.backend
    assert package is not None and backend is not None
    if plan.environment_to_build is not None:
        from .envs import ensure_environment

        environment = ensure_environment(plan.environment_to_build)
        logger.info(
            "model %s runs in environment %s, built for %s",
            package.config.name,
            environment.path,
            plan.environment_to_build.describe(),
        )
        plan = plan.with_interpreter(environment.python)
    executor: Executor
    if plan.pool is not None:
        from .executors.ope import OutOfProcessExecutor

        executor = OutOfProcessExecutor(package, backend, plan.pool, plan.isolation)
    else:
        from .executors.inprocess import InProcessExecutor

        executor = InProcessExecutor(package, backend)
    config = package.config
    return Neuropod(
        executor, config.name, config.platform, config.problem, package=package, validate=plan.call.validate
    )


def _load_remote(plan: Plan) -> Neuropod:
    from .executors.remote import RemoteExecutor

    url = plan.source
    executor = RemoteExecutor.connect(url, plan.remote)
    validate = plan.call.validate
    if validate and not executor.problem.inputs:
        warnings.warn(
            f"remote model {url}: the server declares no input tensors, so requests are not validated here",
            RuntimeWarning,
            stacklevel=4,
        )
        validate = False
    return Neuropod(executor, executor.name, executor.platform, executor.problem, package=None, validate=validate)


if __name__ == "__main__":  # the original's out-of-process evaluation entry point (its eval_in_new_process)
    from ._eval_main import main

    raise SystemExit(main(load_neuropod))
