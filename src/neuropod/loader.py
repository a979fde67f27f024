"""``load_neuropod`` and the uniform :class:`Neuropod` object."""

from __future__ import annotations

import os
import warnings
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from ._original_options import apply_original_options, load_installed_backends  # noqa: F401  (the original's name)
from .backends import BackendOptions, backend_option_table
from .errors import InputValidationError, ModelClosedError, OptionError
from .executors.base import Executor
from .executors.options import PACKAGE_OPTIONS, check_options
from .input_arrays import as_numpy_inputs
from .isolation.options import ISOLATION_OPTIONS, IsolationOptions
from .ope.options import OPE_OPTIONS
from .package import Package, open_package
from .spec import ProblemDefinition, SpecValidator
from .trust import TRUST_OPTIONS, TrustPolicy, choose_isolation
from .urls import REMOTE_SCHEMES, is_model_url

__all__ = ["Neuropod", "load_neuropod", "REMOTE_SCHEMES"]

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
        use_ope: run the model in a worker process over shared memory. None
            (the default) runs it in this process unless the package needs
            another environment or an isolation level is asked for (or the
            trust policy requires one); False insists on this process.
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
    given = dict(options)
    # Keyword arguments of the signature count as given only when they differ from
    # their defaults, so a remote load can refuse visible_gpu=0 but not visible_gpu=None.
    for name, value, default in (
        ("visible_gpu", visible_gpu, None),
        ("use_ope", use_ope, None),
        ("verify_manifest", verify_manifest, True),
        ("validate", validate, True),
        ("intra_op_threads", intra_op_threads, None),
        ("inter_op_threads", inter_op_threads, None),
    ):
        if value != default or type(value) is not type(default):
            given[name] = value
    path_text = os.fspath(neuropod_path)
    if is_model_url(path_text):  # a model server's URL (another scheme is refused by name)
        if given.get("use_ope") is False:  # says nothing the server could disagree with
            del given["use_ope"]
        return _load_remote(str(path_text), given)
    return _load_package(path_text, given)


_PACKAGE_NAMES = frozenset(option.name for option in PACKAGE_OPTIONS)
_OPE_ONLY = {option.name: "it is an option of out-of-process execution (use_ope=True)" for option in OPE_OPTIONS}
_ISOLATED_ONLY = {
    option.name: "it applies to isolated workers (isolation='sandbox' or 'container')" for option in ISOLATION_OPTIONS
}


def _load_package(path: str, given: Dict[str, Any]) -> Neuropod:
    # The package options come first: opening the package needs verify_manifest, and the
    # backend's own options (and so the full check) are known only once its platform is.
    package_values = check_options({k: v for k, v in given.items() if k in _PACKAGE_NAMES}, [PACKAGE_OPTIONS], path)
    use_ope = package_values["use_ope"]
    in_process = given.get("use_ope") is False  # asked for, not just the default
    environment = package_values["environment"]
    if in_process and environment not in (None, "current"):
        raise OptionError(
            f"{path}: use_ope=False runs the model in this process, but environment={environment!r} "
            "runs it in a worker of that environment; drop one of them"
        )
    package = open_package(path, verify=package_values["verify_manifest"])
    if "python_executable" not in given:  # a caller who names the interpreter has chosen the environment
        from .envs import environment_for

        # In this process or an error naming what the package asks for.
        python = environment_for(package, "current" if in_process else environment)
        if python is not None:  # this process does not satisfy the package: a worker in that environment does
            use_ope, given = True, {**given, "use_ope": True, "python_executable": python}
    # The trust policy may require (or, with isolation=None, choose) a sandbox or container.
    isolation, _ = choose_isolation(
        package, package_values["isolation"], TrustPolicy.parse(given.get("trust")), package_values["verify_manifest"]
    )
    isolated = isolation != "process"
    worker_needed = package_values["isolation"] is not None or isolated  # isolation="process": a worker too
    if worker_needed and in_process:
        why = "was asked for" if package_values["isolation"] is not None else "is required by the trust policy"
        raise OptionError(
            f"{path}: use_ope=False runs the model in this process, but isolation={isolation!r} {why}, "
            "which runs it in a worker; drop use_ope=False"
        )
    use_ope = use_ope or worker_needed
    inapplicable = {**({} if use_ope else _OPE_ONLY), **({} if isolated else _ISOLATED_ONLY)}
    platform = package.config.platform
    backend_table = backend_option_table(platform)
    tables = [PACKAGE_OPTIONS, TRUST_OPTIONS, backend_table] + ([OPE_OPTIONS] if use_ope else [])
    tables += [ISOLATION_OPTIONS] if isolated else []
    values = check_options(given, tables, path, inapplicable)
    backend_options = BackendOptions(
        visible_gpu=values["visible_gpu"],
        intra_op_threads=values["intra_op_threads"],
        inter_op_threads=values["inter_op_threads"],
        extra={option.name: values[option.name] for option in backend_table if option.name in given},
    )
    package = apply_original_options(package, given, use_ope)
    executor: Executor
    if use_ope:
        from .executors.ope import OutOfProcessExecutor
        from .ope.options import OpeOptions

        executor = OutOfProcessExecutor(
            package, backend_options, OpeOptions.from_values(values), IsolationOptions.from_values(isolation, values)
        )
    else:
        from .executors.inprocess import InProcessExecutor

        executor = InProcessExecutor(package, backend_options)
    config = package.config
    return Neuropod(
        executor, config.name, config.platform, config.problem, package=package, validate=values["validate"]
    )


def _load_remote(url: str, given: Dict[str, Any]) -> Neuropod:
    from .executors.remote import REMOTE_OPTIONS, REMOTE_REFUSED, RemoteExecutor
    from .urls import parse_model_url

    parse_model_url(url)  # an unsupported scheme or a malformed URL first, before any option
    values = check_options(given, [REMOTE_OPTIONS], url, REMOTE_REFUSED)
    executor = RemoteExecutor.connect(url, values)
    validate = values["validate"]
    if validate and not executor.problem.inputs:
        warnings.warn(
            f"remote model {url}: the server declares no input tensors, so requests are not validated here",
            RuntimeWarning,
            stacklevel=3,
        )
        validate = False
    return Neuropod(executor, executor.name, executor.platform, executor.problem, package=None, validate=validate)


if __name__ == "__main__":  # the original's out-of-process evaluation entry point (its eval_in_new_process)
    from ._eval_main import main

    raise SystemExit(main())
