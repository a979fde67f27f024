"""Problem files (``problem.json`` or a Python module) and ``check``: does a model implement a problem?

A problem file holds the input and output specs and, optionally, the
metrics to evaluate, the tolerances for comparing models, the batch symbol
and which dataset field labels which output::

    {
      "name": "addition",
      "input_spec":  [{"name": "x", "dtype": "float32", "shape": ["batch", null]}, ...],
      "output_spec": [{"name": "out", "dtype": "float32", "shape": ["batch", null]}],
      "metrics": ["mae", {"name": "rmse", "output": "out"}],
      "tolerances": {"rtol": 1e-5, "atol": 1e-6, "outputs": {"out": {"atol": 1e-4}}},
      "batch_symbol": "batch",
      "labels": {"out": "target"}
    }

A Python module sets the same as upper-case globals (``INPUT_SPEC``,
``OUTPUT_SPEC`` or ``PROBLEM``, ``METRICS`` — names, dicts or callables —,
``TOLERANCES``, ``BATCH_SYMBOL``, ``LABELS``, ``NAME``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

from ..errors import SpecError
from ..spec import Dim, ProblemDefinition, TensorSpec

__all__ = ["Problem", "ProblemCheck", "as_problem", "check_problem", "load_problem", "batch_symbol_of"]

DEFAULT_RTOL = 1e-5
DEFAULT_ATOL = 1e-6
_JSON_KEYS = ("name", "input_spec", "output_spec", "metrics", "tolerances", "batch_symbol", "labels")


@dataclass(frozen=True)
class Problem:
    """A problem definition plus what the tools need to evaluate and compare models of it.

    Attributes:
        definition: the input and output specs.
        name: a name for reports ("" when the file gave none).
        metrics: metric entries: names, ``{"name": ..., option: value}`` dicts or callables.
        rtol, atol: the default tolerances for comparing float outputs.
        output_tolerances: per-output ``(rtol, atol)`` overriding the defaults.
        batch_symbol: the symbol of the batch dimension (dimension 0 of every
            input); None means "the symbol every input has in dimension 0", if any.
        labels: output name -> the dataset field that holds its truth.
    """

    definition: ProblemDefinition
    name: str = ""
    metrics: Tuple[Any, ...] = ()
    rtol: float = DEFAULT_RTOL
    atol: float = DEFAULT_ATOL
    output_tolerances: Mapping[str, Tuple[float, float]] = field(default_factory=dict)
    batch_symbol: Optional[str] = None
    labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def inputs(self) -> Tuple[TensorSpec, ...]:
        return self.definition.inputs

    @property
    def outputs(self) -> Tuple[TensorSpec, ...]:
        return self.definition.outputs

    def tolerance(self, output: str) -> Tuple[float, float]:
        """``(rtol, atol)`` for ``output``."""
        return self.output_tolerances.get(output, (self.rtol, self.atol))

    def batch_dim(self) -> Optional[str]:
        """The batch symbol: the given one, else the symbol every input has in dimension 0."""
        return self.batch_symbol or batch_symbol_of(self.definition)


def batch_symbol_of(definition: ProblemDefinition) -> Optional[str]:
    """The symbol every input has in dimension 0, or None."""
    firsts = {spec.shape[0] if spec.shape else None for spec in definition.inputs}
    if len(firsts) == 1:
        (first,) = firsts
        if isinstance(first, str):
            return first
    return None


def _tolerances(value: Any, source: str) -> Tuple[float, float, Dict[str, Tuple[float, float]]]:
    if value is None:
        return DEFAULT_RTOL, DEFAULT_ATOL, {}
    if not isinstance(value, Mapping):
        raise SpecError(f"{source}: tolerances must be an object with rtol, atol and outputs; got {value!r}")
    unknown = sorted(set(value) - {"rtol", "atol", "outputs"})
    if unknown:
        raise SpecError(f"{source}: tolerances: unknown field(s) {', '.join(unknown)}; expected rtol, atol, outputs")

    def number(entry: Mapping[str, Any], key: str, default: float, where: str) -> float:
        got = entry.get(key, default)
        if isinstance(got, bool) or not isinstance(got, (int, float)) or got < 0:
            raise SpecError(f"{source}: {where}{key} must be a number >= 0; got {got!r}")
        return float(got)

    rtol = number(value, "rtol", DEFAULT_RTOL, "tolerances.")
    atol = number(value, "atol", DEFAULT_ATOL, "tolerances.")
    per_output: Dict[str, Tuple[float, float]] = {}
    outputs = value.get("outputs", {})
    if not isinstance(outputs, Mapping):
        raise SpecError(f"{source}: tolerances.outputs must map output names to {{rtol, atol}}; got {outputs!r}")
    for name, entry in outputs.items():
        if not isinstance(entry, Mapping) or set(entry) - {"rtol", "atol"}:
            raise SpecError(f"{source}: tolerances.outputs[{name!r}] must be {{rtol, atol}}; got {entry!r}")
        where = f"tolerances.outputs[{name!r}]."
        per_output[name] = (number(entry, "rtol", rtol, where), number(entry, "atol", atol, where))
    return rtol, atol, per_output


def _build(data: Mapping[str, Any], source: str) -> Problem:
    definition = data.get("definition")
    if definition is None:
        for key in ("input_spec", "output_spec"):
            if data.get(key) is None:
                raise SpecError(f"{source}: missing {key}")
        try:
            definition = ProblemDefinition(data["input_spec"], data["output_spec"])
        except SpecError as exc:
            raise SpecError(f"{source}: {exc}") from None
    rtol, atol, per_output = _tolerances(data.get("tolerances"), source)
    output_names = {spec.name for spec in definition.outputs}
    for name in per_output:
        if name not in output_names:
            raise SpecError(f"{source}: tolerances.outputs names {name!r}, which is not an output")
    metrics = data.get("metrics") or ()
    if isinstance(metrics, (str, Mapping)) or callable(metrics):
        metrics = [metrics]
    for entry in metrics:
        if not (isinstance(entry, str) or callable(entry) or (isinstance(entry, Mapping) and "name" in entry)):
            raise SpecError(
                f"{source}: each metric must be a name, a {{'name': ...}} object or a callable; got {entry!r}"
            )
    labels = data.get("labels") or {}
    if not isinstance(labels, Mapping) or not all(isinstance(v, str) for v in labels.values()):
        raise SpecError(f"{source}: labels must map output names to dataset field names; got {labels!r}")
    batch = data.get("batch_symbol")
    if batch is not None:
        symbols = {d for spec in definition.inputs for d in spec.shape if isinstance(d, str)}
        if batch not in symbols:
            raise SpecError(f"{source}: batch_symbol {batch!r} is not a symbol of the inputs ({sorted(symbols)})")
    return Problem(
        definition,
        name=str(data.get("name") or ""),
        metrics=tuple(metrics),
        rtol=rtol,
        atol=atol,
        output_tolerances=per_output,
        batch_symbol=batch,
        labels=dict(labels),
    )


def _load_json(path: Path) -> Problem:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise SpecError(f"problem file {str(path)!r}: not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise SpecError(f"problem file {str(path)!r}: expected a JSON object, got {type(data).__name__}")
    unknown = sorted(set(data) - set(_JSON_KEYS))
    if unknown:
        raise SpecError(
            f"problem file {str(path)!r}: unknown field(s) {', '.join(unknown)}; expected {', '.join(_JSON_KEYS)}"
        )
    return _build(data, f"problem file {str(path)!r}")


def _load_module(path: Path) -> Problem:
    # A unique module name: two problem files called problem.py must not collide in sys.modules.
    module_name = f"_neuropod_problem_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise SpecError(f"problem file {str(path)!r}: cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[module_name]
        raise SpecError(f"problem file {str(path)!r}: importing it raised {type(exc).__name__}: {exc}") from exc
    data: Dict[str, Any] = {}
    found = getattr(module, "PROBLEM", None)
    if isinstance(found, Problem):
        return found
    if isinstance(found, ProblemDefinition):
        data["definition"] = found
    elif isinstance(found, Mapping):
        data.update(found)
    for key in _JSON_KEYS:
        if hasattr(module, key.upper()):
            data[key] = getattr(module, key.upper())
    if "definition" not in data and ("input_spec" not in data or "output_spec" not in data):
        raise SpecError(f"problem file {str(path)!r}: define PROBLEM, or INPUT_SPEC and OUTPUT_SPEC")
    return _build(data, f"problem file {str(path)!r}")


def load_problem(path: Union[str, os.PathLike[str]]) -> Problem:
    """Read a problem from ``problem.json`` or a Python module (``.py``).

    Raises:
        SpecError: the file is missing or malformed (the message names the file and field).
    """
    file = Path(path)
    if not file.is_file():
        raise SpecError(f"problem file {str(file)!r}: no such file")
    if file.suffix == ".py":
        return _load_module(file)
    return _load_json(file)


def as_problem(value: Any) -> Problem:
    """A :class:`Problem` from a Problem, a ProblemDefinition, its dict form, a problem file (``.json``/``.py``),
    a package path or URL, or a loaded model."""
    if isinstance(value, Problem):
        return value
    if isinstance(value, ProblemDefinition):
        return Problem(value)
    if isinstance(value, Mapping):
        return _build(value, "problem")
    if isinstance(value, (str, os.PathLike)):
        if Path(value).suffix in (".json", ".py"):
            return load_problem(value)
        return Problem(_definition_of(value))  # a package or a server URL: the problem it implements
    definition = getattr(value, "problem", None)  # a loaded Neuropod
    if isinstance(definition, ProblemDefinition):
        return Problem(definition, name=str(getattr(value, "name", "")))
    raise SpecError(
        f"problem: expected a problem file, a ProblemDefinition, a dict or a loaded model; got {type(value).__name__}"
    )


@dataclass
class ProblemCheck:
    """What :func:`check_problem` found.

    Attributes:
        errors: ways the model does not implement the problem (each names the tensor and dimension).
        warnings: differences that do not break the contract but are worth knowing
            (an output size the model does not promise, an extra input).
    """

    errors: List[str] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


def _dim_text(dim: Dim) -> str:
    return "None" if dim is None else repr(dim) if isinstance(dim, str) else str(dim)


class _Aligner:
    """Checks one (problem dim, model dim) pair at a time, inputs first; each model symbol must stand for one thing."""

    def __init__(self, result: ProblemCheck) -> None:
        self.result = result
        #: model symbol -> (what the problem has there, where it was first seen)
        self.model_to_problem: Dict[str, Tuple[Any, str]] = {}

    def _bind(self, table: Dict[str, Tuple[Any, str]], key: str, value: Any, where: str) -> None:
        previous = table.setdefault(key, (value, where))
        if previous[0] != value:
            other = previous[0]
            value_text = "any size" if isinstance(value, tuple) else _dim_text(value)
            other_text = "any size" if isinstance(other, tuple) else _dim_text(other)
            self.result.errors.append(
                f"{where}: symbols not aligned: the model's symbol {key!r} stands for {other_text} at "
                f"{previous[1]} but for {value_text} here"
            )

    def pair(self, kind: str, name: str, index: int, p: Dim, q: Dim) -> None:
        where = f"{kind} {name!r} dimension {index}"
        errors, warnings = self.result.errors, self.result.warnings
        says = f"the problem says {_dim_text(p)}, the model says {_dim_text(q)}"
        if isinstance(q, str):
            if kind == "output" and p is not None and q not in self.model_to_problem:
                warnings.append(f"{where}: {says}, a size no input of the model binds; the model does not promise it")
            # A unique token for "any size": a model symbol tied to it ties input dims the problem leaves
            # free. (A problem symbol may map to several model symbols: the model is looser, which is fine;
            # an output the problem leaves free may be anything.)
            if kind == "input" or p is not None:
                self._bind(self.model_to_problem, q, p if p is not None else ("any", where), where)
        if isinstance(p, int) and isinstance(q, int):
            if p != q:
                errors.append(f"{where}: {says}")
        elif kind == "input":
            # The model must accept every input the problem allows.
            if isinstance(q, int):
                errors.append(f"{where}: {says} (the model accepts only size {q})")
        elif p is not None:
            # The model must produce what the problem promises.
            if q is None:
                warnings.append(f"{where}: {says}; the model does not promise that size")
            elif isinstance(p, str) and isinstance(q, int):
                errors.append(f"{where}: {says}")


def check_problem(model: Any, problem: Any) -> ProblemCheck:
    """Does ``model`` implement ``problem``: names, dtypes, shapes compatible, symbols aligned?

    Args:
        model: a loaded Neuropod, a package path (its config is read; the
            model is not loaded), a server URL, or a ProblemDefinition.
        problem: anything :func:`as_problem` takes.

    Returns:
        A :class:`ProblemCheck`; ``ok`` is False when any error was found.
    """
    wanted = as_problem(problem).definition
    have = _definition_of(model)
    result = ProblemCheck()
    aligner = _Aligner(result)
    for kind, expected, actual in (("input", wanted.inputs, have.inputs), ("output", wanted.outputs, have.outputs)):
        by_name = {spec.name: spec for spec in actual}
        for spec in expected:
            got = by_name.pop(spec.name, None)
            if got is None:
                result.errors.append(f"{kind} {spec.name!r}: in the problem but not in the model")
                continue
            if got.dtype != spec.dtype:
                result.errors.append(
                    f"{kind} {spec.name!r}: the problem says dtype {spec.dtype}, the model {got.dtype}"
                )
            if len(got.shape) != len(spec.shape):
                result.errors.append(
                    f"{kind} {spec.name!r}: the problem says rank {len(spec.shape)} {list(spec.shape)}, "
                    f"the model rank {len(got.shape)} {list(got.shape)}"
                )
                continue
            for index, (p, q) in enumerate(zip(spec.shape, got.shape)):
                aligner.pair(kind, spec.name, index, p, q)
        for name in by_name:
            if kind == "input":
                result.warnings.append(f"input {name!r}: the model takes it but the problem does not give it")
            else:
                result.warnings.append(f"output {name!r}: the model returns it but the problem does not name it")
    return result


def _definition_of(model: Any) -> ProblemDefinition:
    if isinstance(model, ProblemDefinition):
        return model
    if isinstance(model, Problem):
        return model.definition
    definition = getattr(model, "problem", None)
    if isinstance(definition, ProblemDefinition):
        return definition
    if isinstance(model, (str, os.PathLike)):
        from ..loader import load_neuropod
        from ..urls import is_model_url

        text = os.fspath(model)
        if is_model_url(text):
            with load_neuropod(text) as remote:
                return remote.problem
        from ..package import open_package

        return open_package(text, verify=False).config.problem
    raise SpecError(f"model: expected a loaded model, a package path or a URL; got {type(model).__name__}")
