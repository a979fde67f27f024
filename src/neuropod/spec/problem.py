"""Problem definitions and problem files (``problem.json`` or a Python module).

A :class:`ProblemDefinition` is the input and output specs together; any model implementing it is
interchangeable. A problem file adds what the tools need to evaluate and compare models of it.

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
from .inference import infer_spec
from .tensors import TensorSpec, as_specs, symbol_bounds

__all__ = ["ProblemDefinition", "Problem", "load_problem", "batch_symbol_of", "problem_specs"]


@dataclass(frozen=True)
class ProblemDefinition:
    """The contract a model implements: its input and output specs."""

    inputs: Tuple[TensorSpec, ...]
    outputs: Tuple[TensorSpec, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "inputs", as_specs(self.inputs, "input_spec"))
        object.__setattr__(self, "outputs", as_specs(self.outputs, "output_spec"))
        symbol_bounds(self.inputs + self.outputs, "problem definition")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ProblemDefinition:
        """Build from ``{"input_spec": [...], "output_spec": [...]}``."""
        for key in ("input_spec", "output_spec"):
            if key not in data:
                raise SpecError(f"problem definition: missing field {key!r}")
        return cls(data["input_spec"], data["output_spec"])

    def to_dict(self) -> Dict[str, List[Dict[str, Any]]]:
        return {
            "input_spec": [s.to_dict() for s in self.inputs],
            "output_spec": [s.to_dict() for s in self.outputs],
        }

    @classmethod
    def from_file(cls, path: Union[str, os.PathLike[str]]) -> ProblemDefinition:
        """Read the specs of a problem file (``problem.json`` or a Python module); see :func:`load_problem`.

        Raises:
            SpecError: the file is missing or malformed.
        """
        return load_problem(path).definition


def problem_specs(
    problem: Any,
    input_spec: Any = None,
    output_spec: Any = None,
    test_input_data: Any = None,
    test_expected_out: Any = None,
) -> Tuple[Any, Any]:
    """``(input_spec, output_spec)`` from a packager's ``problem=`` argument, or the specs given as they are.

    Args:
        problem: None, a ProblemDefinition, its dict form, a problem file
            path, or a ``neuropod.tools.Problem``.
        input_spec, output_spec: the separate specs; given together with ``problem`` they are refused.
        test_input_data, test_expected_out: a spec left out (and no problem) is read off these
            examples with :func:`neuropod.infer_spec`, axis 0 named ``"batch"``.
    """
    if problem is None:
        if input_spec is None and test_input_data is not None:
            input_spec = infer_spec(test_input_data)
        if output_spec is None and test_expected_out is not None:
            output_spec = infer_spec(test_expected_out)
        return input_spec, output_spec
    if input_spec is not None or output_spec is not None:
        raise SpecError("problem: pass problem= or input_spec= and output_spec=, not both")
    if isinstance(problem, (str, os.PathLike)):
        problem = ProblemDefinition.from_file(problem)
    elif isinstance(problem, Mapping):
        problem = ProblemDefinition.from_dict(problem)
    problem = getattr(problem, "definition", problem)  # a neuropod.tools.Problem
    if not isinstance(problem, ProblemDefinition):
        raise SpecError(
            f"problem: expected a ProblemDefinition, its dict form or a problem file; got {type(problem).__name__}"
        )
    return list(problem.inputs), list(problem.outputs)


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


def problem_from_mapping(data: Mapping[str, Any], source: str) -> Problem:
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
    return problem_from_mapping(data, f"problem file {str(path)!r}")


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
    return problem_from_mapping(data, f"problem file {str(path)!r}")


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
