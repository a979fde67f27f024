"""The Python backend: packaged code in ``0/code`` with an entrypoint.

``0/config.json`` holds ``entrypoint_package`` and ``entrypoint``. The
entrypoint is called with the absolute path of ``0/data`` and returns a
callable that takes the inputs as keyword numpy arrays and returns a dict of
arrays (torch tensors are converted too: the PyTorch packager uses this
backend).

Two packages whose code uses the same module names must not collide: the
package's modules are imported with its code dir first on ``sys.path``, then
taken out of ``sys.modules`` again (the loaded objects keep them alive), and
whatever those names held before is put back.

Custom ops of a Python package are extension modules its code imports by
their file name; as in the original, ``0/ops`` goes on ``sys.path`` for good
(an extension module cannot be unloaded, so there is nothing to put back).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
import threading
from pathlib import Path
from typing import Any, Callable, List, Sequence, Set, Tuple

import numpy as np

from ...errors import InferenceError, PackageError, RequirementsError
from ...package import Package, layout
from ...package.manifest import sha256_file
from ...requirements import installed_distribution_version, requirement_problems
from ..base import Backend, BackendOptions, TensorDict, as_string_array, model_failure

__all__ = ["PythonBackend", "check_requirements"]

_IMPORT_LOCK = threading.Lock()
#: ``module:sha256`` of every custom op put on sys.path in this process (the same again is the same op).
_LOADED_OPS: Set[str] = set()


def check_requirements(requirements: List[str]) -> None:
    """Check pinned ``name==version`` lines against this environment (by the standard version rules).

    Raises:
        PackageError: a line is not a requirement.
        RequirementsError: naming every missing or mismatched requirement.
    """
    try:
        problems = requirement_problems(requirements, installed_distribution_version)
    except ValueError as exc:
        raise PackageError(str(exc)) from None
    if problems:
        raise RequirementsError(
            "this Python environment does not meet the package's requirements: " + "; ".join(problems)
        )


def _top_level_names(code_dir: Path) -> List[str]:
    names = []
    for entry in code_dir.iterdir():
        if entry.is_dir() or entry.suffix in (".py", ".so", ".pyc"):
            names.append(entry.name.split(".")[0])
    return names


def _owned(module_name: str, names: List[str]) -> bool:
    return any(module_name == n or module_name.startswith(n + ".") for n in names)


def _check_entrypoint(settings: Any, where: Path, code_dir: Path) -> Tuple[str, str]:
    """``(entrypoint_package, entrypoint)`` from ``0/config.json``: a module of the package's own code and a name."""
    names = {}
    for key in ("entrypoint_package", "entrypoint"):
        if key not in settings:
            raise PackageError(f"{where}: missing {key!r}")
        names[key] = settings[key]
    package_name, function_name = names["entrypoint_package"], names["entrypoint"]
    if not isinstance(package_name, str) or not all(part.isidentifier() for part in package_name.split(".")):
        raise PackageError(
            f"{where}: field 'entrypoint_package': expected a dotted module name such as 'model.main', "
            f"got {package_name!r}"
        )
    if not isinstance(function_name, str) or not function_name.isidentifier():
        raise PackageError(f"{where}: field 'entrypoint': expected a function name, got {function_name!r}")
    top = package_name.split(".")[0]
    own = _top_level_names(code_dir) if code_dir.is_dir() else []
    if top not in own:
        # Importing it anyway would run whatever module of that name is on sys.path, outside the package.
        raise PackageError(
            f"{where}: field 'entrypoint_package': {package_name!r} is not in the package's code "
            f"({layout.CODE_DIR} holds {sorted(own) or 'nothing'})"
        )
    return package_name, function_name


def _import_entrypoint(code_dir: Path, package_name: str, function_name: str) -> Callable[..., Any]:
    names = _top_level_names(code_dir) if code_dir.is_dir() else []
    resolved_code_dir = code_dir.resolve()
    with _IMPORT_LOCK:
        saved = {k: v for k, v in sys.modules.items() if _owned(k, names)}
        for key in saved:
            del sys.modules[key]
        sys.path.insert(0, str(code_dir))
        # Writing __pycache__ into the package would change it under its manifest
        # (the next load would refuse it), so its code is imported without bytecode files.
        wrote_bytecode, sys.dont_write_bytecode = sys.dont_write_bytecode, True
        try:
            module = importlib.import_module(package_name)
            file = getattr(module, "__file__", None)
            origins: List[str] = [file] if file else list(getattr(module, "__path__", []))
            origin = origins[0] if origins else None
            if not origins or any(resolved_code_dir not in Path(o).resolve().parents for o in origins):
                # A built-in or frozen module of the same name wins over sys.path: never the package's code.
                raise PackageError(
                    f"entrypoint package {package_name!r} resolved to {origin or 'a built-in module'}, "
                    f"not to the package's {layout.CODE_DIR}; rename the package's module"
                )
        except ImportError as exc:
            raise PackageError(
                f"entrypoint package {package_name!r} cannot be imported from {code_dir}: {exc}"
            ) from exc
        except PackageError:
            raise
        except Exception as exc:  # the package's own code failed while it was imported
            raise PackageError(
                f"entrypoint package {package_name!r} failed while it was imported from {code_dir}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        finally:
            sys.dont_write_bytecode = wrote_bytecode
            sys.path.remove(str(code_dir))
            for key in [k for k in sys.modules if _owned(k, names)]:
                del sys.modules[key]
            sys.modules.update(saved)
    entrypoint = getattr(module, function_name, None)
    if entrypoint is None:
        raise PackageError(f"entrypoint {function_name!r} not found in {package_name!r}")
    return entrypoint  # type: ignore[no-any-return]


def _add_custom_ops(package: Package) -> None:
    """Make the package's custom ops importable by their module names, as the original did.

    An op with the name and bytes of one already added is the same op. An op whose
    name Python already resolves to something else is refused: the model
    would import that instead, and a process holds one module of a name.

    Raises:
        PackageError: naming the op, the module it clashes with, and what to do.
    """
    paths = package.custom_op_paths()
    if not paths:
        return
    ops_dir = str(package.ops_dir.resolve())
    with _IMPORT_LOCK:
        for path in paths:
            module_name = path.name.split(".", 1)[0]  # addition_op.so, addition_op.cpython-38-x86_64-linux-gnu.so
            key = f"{module_name}:{sha256_file(path)}"
            if key in _LOADED_OPS:
                continue
            found = importlib.util.find_spec(module_name) if module_name.isidentifier() else None
            if found is not None:
                raise PackageError(
                    f"custom op {path.name!r}: Python already imports {module_name!r} from "
                    f"{found.origin or 'elsewhere'}, so the model would not get this op; load this package in "
                    "its own process (use_ope=True) or rename the op"
                )
            _LOADED_OPS.add(key)
        if ops_dir not in sys.path:
            sys.path.insert(0, ops_dir)


def _to_numpy(value: Any, name: str) -> np.ndarray:
    if type(value).__module__.startswith("torch"):
        from .._torch_tensors import to_numpy

        return to_numpy(value, name)
    if isinstance(value, np.ndarray):
        return as_string_array(value) if value.dtype.kind in "SO" else value
    array = np.asarray(value)
    return as_string_array(array) if array.dtype.kind in "SO" else array


class PythonBackend(Backend):
    def __init__(self, package: Package, options: BackendOptions) -> None:
        super().__init__(package, options)
        check_requirements(package.requirements())
        settings = package.backend_config()
        package_name, function_name = _check_entrypoint(
            settings, package.root / layout.BACKEND_CONFIG, package.code_dir
        )
        _add_custom_ops(package)
        entrypoint = _import_entrypoint(package.code_dir, package_name, function_name)
        try:
            self.model = entrypoint(str(package.data_dir.resolve()))
        except Exception as exc:
            raise InferenceError(f"entrypoint {package_name}.{function_name} failed: {exc}") from exc
        if not callable(self.model):
            raise PackageError(
                f"entrypoint {package_name}.{function_name} returned {type(self.model).__name__}, not a callable"
            )

    def required_inputs(self) -> Sequence[str]:
        """Keyword parameters of the model's callable without a default (all spec inputs when unknown)."""
        try:
            parameters = inspect.signature(self.model).parameters
        except (TypeError, ValueError):  # a callable Python cannot describe: the model decides
            return []
        needed = {
            name
            for name, parameter in parameters.items()
            if parameter.default is inspect.Parameter.empty
            and parameter.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        }
        return [spec.name for spec in self.package.config.input_spec if spec.name in needed]

    def infer(self, inputs: TensorDict) -> TensorDict:
        # Model code written for the original got arrays without negative strides
        # (torch.from_numpy refuses them): such a view is copied, anything else passes as it is.
        for name, array in inputs.items():
            if array.strides and min(array.strides) < 0:
                inputs = {**inputs, name: np.ascontiguousarray(array)}
        try:
            result = self.model(**inputs)
        except Exception as exc:
            raise model_failure("Python", self.package.config.name, exc, inputs=inputs) from exc
        if not isinstance(result, dict):
            raise InferenceError(
                f"Python model {self.package.config.name!r} returned {type(result).__name__}, expected a dict of arrays"
            )
        return {str(k): _to_numpy(v, str(k)) for k, v in result.items()}

    def close(self) -> None:
        self.model = None
