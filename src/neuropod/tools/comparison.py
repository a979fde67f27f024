"""``compare``: do models of one problem agree? Same inputs, outputs compared per output, latency side by side.

Each model is called once on the first batch before anything is timed (its warm-up call, not recorded).

The first model is the reference. Floats agree within ``atol + rtol * |reference|``
(NaN equals NaN); integers, booleans and strings must be equal.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Sequence

import numpy as np

from ..errors import ProblemMismatchError
from ..progress import Progress, ProgressMode
from ._models import describe, latency_stats, opened
from .datasets import open_dataset
from .problem import Problem, as_problem, check_problem
from .synthetic import generate_inputs

__all__ = ["Agreement", "Comparison", "ProblemMismatchError", "compare"]


@dataclass
class Agreement:
    """How one output of one model agrees with the reference's.

    Attributes:
        output: the output's name.
        model: the compared model's label.
        exact: compared for equality (ints, bools, strings) rather than within tolerance.
        elements: elements compared.
        within: elements that agree.
        max_abs_error, max_rel_error: the largest differences (floats and ints; None for strings).
        mismatches: the first disagreements: ``{"index": [...], "reference": v, "value": v}``.
        shape_mismatch: set when the shapes differ ("(2, 3) vs (2, 4)").
    """

    output: str
    model: str
    exact: bool
    rtol: float
    atol: float
    elements: int = 0
    within: int = 0
    max_abs_error: Optional[float] = None
    max_rel_error: Optional[float] = None
    mismatches: List[Dict[str, Any]] = field(default_factory=list)
    shape_mismatch: Optional[str] = None

    @property
    def fraction_within(self) -> float:
        return self.within / self.elements if self.elements else (0.0 if self.shape_mismatch else 1.0)

    @property
    def ok(self) -> bool:
        return self.shape_mismatch is None and self.within == self.elements

    def to_json(self) -> Dict[str, Any]:
        return {
            "output": self.output,
            "model": self.model,
            "ok": self.ok,
            "exact": self.exact,
            "rtol": self.rtol,
            "atol": self.atol,
            "elements": self.elements,
            "fraction_within": self.fraction_within,
            "max_abs_error": self.max_abs_error,
            "max_rel_error": self.max_rel_error,
            "first_mismatches": self.mismatches,
            "shape_mismatch": self.shape_mismatch,
        }


@dataclass
class Comparison:
    """What :func:`compare` found: per-output agreement and each model's latency."""

    models: List[Dict[str, Any]]
    agreements: List[Agreement]
    latencies_s: Dict[str, List[float]]
    examples: int
    warnings: List[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(agreement.ok for agreement in self.agreements)

    def to_json(self) -> Dict[str, Any]:
        return {
            "ok": self.ok,
            "examples": self.examples,
            "models": self.models,
            "agreements": [agreement.to_json() for agreement in self.agreements],
            "latency_ms": {label: latency_stats(values) for label, values in self.latencies_s.items()},
            "warnings": self.warnings,
        }


def _scalar(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def _accumulate(agreement: Agreement, reference: np.ndarray, value: np.ndarray, offset: int, keep: int) -> None:
    if reference.shape != value.shape:
        if agreement.shape_mismatch is None:
            agreement.shape_mismatch = f"{tuple(reference.shape)} vs {tuple(value.shape)} (batch from example {offset})"
        return
    if agreement.exact:
        close = reference == value
        if reference.dtype.kind in "iu" and reference.size:
            diff = np.abs(reference.astype(np.float64) - value.astype(np.float64))
            agreement.max_abs_error = max(agreement.max_abs_error or 0.0, float(diff.max()))
    else:
        ref = reference.astype(np.float64, copy=False)
        got = value.astype(np.float64, copy=False)
        close = np.isclose(got, ref, rtol=agreement.rtol, atol=agreement.atol, equal_nan=True)
        if ref.size:
            with np.errstate(invalid="ignore", divide="ignore"):
                diff = np.abs(got - ref)
                both_nan = np.isnan(ref) & np.isnan(got)
                diff = np.where(both_nan, 0.0, diff)
                rel = np.where(ref != 0, diff / np.abs(ref), np.where(diff == 0, 0.0, np.inf))
            agreement.max_abs_error = max(agreement.max_abs_error or 0.0, float(np.nanmax(diff)))
            agreement.max_rel_error = max(agreement.max_rel_error or 0.0, float(np.nanmax(rel)))
    agreement.elements += close.size
    agreement.within += int(np.count_nonzero(close))
    if len(agreement.mismatches) < keep and close.size != np.count_nonzero(close):
        for index in np.argwhere(~np.asarray(close))[: keep - len(agreement.mismatches)]:
            position = tuple(int(i) for i in index)
            shown = [position[0] + offset, *position[1:]] if position else []
            agreement.mismatches.append(
                {"index": shown, "reference": _scalar(reference[position]), "value": _scalar(value[position])}
            )


def _labels(models: Sequence[Any], loaded: Sequence[Any]) -> List[str]:
    labels = []
    for source, model in zip(models, loaded):
        label = os.fspath(source) if isinstance(source, (str, os.PathLike)) else f"{model.platform}:{model.name}"
        while label in labels:
            label += "'"
        labels.append(label)
    return labels


def compare(
    models: Sequence[Any],
    data: Any = None,
    *,
    problem: Any = None,
    rtol: Optional[float] = None,
    atol: Optional[float] = None,
    batch_size: int = 8,
    batches: int = 4,
    seed: int = 0,
    max_mismatches: int = 5,
    progress: ProgressMode = "auto",
    **load_options: Any,
) -> Comparison:
    """Run every model on the same inputs and report, per output, how each agrees with the first.

    Args:
        models: two or more loaded Neuropods, package paths or server URLs.
        data: a dataset (anything ``evaluate`` takes); default: ``batches``
            batches of random inputs generated from the first model's spec.
        problem: the problem they must implement (a file or definition);
            default: the first model's. Its tolerances apply unless given here.
        rtol, atol: tolerances for float outputs.
        batch_size: examples per call.
        batches: how many batches of generated inputs (without ``data``).
        seed: the seed of generated inputs.
        max_mismatches: how many disagreeing elements to record per output.

    Raises:
        ProblemMismatchError: a model does not implement the problem (every reason is listed).
    """
    if len(models) < 2:
        raise ProblemMismatchError(f"compare: needs two or more models, got {len(models)}")
    with contextlib.ExitStack() as stack:
        loaded = [stack.enter_context(opened(model, **load_options)) for model in models]
        labels = _labels(models, loaded)
        spec = as_problem(problem) if problem is not None else Problem(loaded[0].problem, name=loaded[0].name)
        warnings: List[str] = []
        failures: List[str] = []
        for label, model in zip(labels, loaded):
            check = check_problem(model, spec)
            failures += [f"{label}: {error}" for error in check.errors]
            warnings += [f"{label}: {warning}" for warning in check.warnings]
        if failures:
            raise ProblemMismatchError("the models do not implement the same problem: " + "; ".join(failures))
        input_names = {s.name for s in spec.inputs}
        outputs = [s for s in spec.outputs]
        agreements = {
            (s.name, label): Agreement(
                s.name,
                label,
                exact=s.dtype == "string" or not s.dtype.startswith(("float", "bfloat")),
                rtol=rtol if rtol is not None else spec.tolerance(s.name)[0],
                atol=atol if atol is not None else spec.tolerance(s.name)[1],
            )
            for s in outputs
            for label in labels[1:]
        }
        latencies: Dict[str, List[float]] = {label: [] for label in labels}
        examples = 0
        total = None if data is not None else batch_size * batches
        warm = False
        with Progress(f"compare {len(loaded)} models", total, "examples", progress) as bar:
            for batch in _inputs(spec, data, batch_size, batches, seed):
                inputs = {name: array for name, array in batch.items() if name in input_names}
                if not warm:
                    # A first call pays for lazy initialisation (TorchScript's profiling runs, XLA compiles,
                    # a worker's first mapping): each model makes it untimed, so the latencies compare models.
                    for model in loaded:
                        model.infer(inputs)
                    warm = True
                results = []
                for label, model in zip(labels, loaded):
                    began = time.perf_counter()
                    results.append(model.infer(inputs))
                    latencies[label].append(time.perf_counter() - began)
                rows = len(next(iter(inputs.values()))) if inputs and next(iter(inputs.values())).ndim else 1
                for s in outputs:
                    reference = results[0][s.name]
                    for label, result in zip(labels[1:], results[1:]):
                        _accumulate(agreements[(s.name, label)], reference, result[s.name], examples, max_mismatches)
                examples += rows
                bar.advance(rows)
        return Comparison(
            models=[describe(model, source) for model, source in zip(loaded, models)],
            agreements=list(agreements.values()),
            latencies_s=latencies,
            examples=examples,
            warnings=warnings,
        )


def _inputs(spec: Problem, data: Any, batch_size: int, batches: int, seed: int) -> Iterator[Dict[str, np.ndarray]]:
    if data is not None:
        yield from open_dataset(data, spec).batches(batch_size, {s.name for s in spec.inputs})
        return
    rng = np.random.default_rng(seed)
    for _ in range(batches):
        yield generate_inputs(spec.definition, batch_size, rng, batch_symbol=spec.batch_dim())
