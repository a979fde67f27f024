"""Does a model implement a problem (:func:`check_problem`), and a problem from whatever names one (:func:`as_problem`).

Problem files (``problem.json`` or a Python module with metrics, tolerances and labels) are read by
:mod:`neuropod.spec.problem`; their names are re-exported here, where the tools have always found them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Tuple

from ..errors import SpecError
from ..spec import Dim, ProblemDefinition
from ..spec.problem import Problem, batch_symbol_of, load_problem, problem_from_mapping

__all__ = ["Problem", "ProblemCheck", "as_problem", "check_problem", "load_problem", "batch_symbol_of"]


def as_problem(value: Any) -> Problem:
    """A :class:`Problem` from a Problem, a ProblemDefinition, its dict form, a problem file (``.json``/``.py``),
    a package path or URL, or a loaded model."""
    if isinstance(value, Problem):
        return value
    if isinstance(value, ProblemDefinition):
        return Problem(value)
    if isinstance(value, Mapping):
        return problem_from_mapping(value, "problem")
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
