"""``evaluate``: run a model over a dataset in batches, compute metrics, time every call, write a report."""

from __future__ import annotations

import array
import datetime
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

from .._version import __version__
from ..errors import SpecError
from ..progress import Progress, ProgressMode
from ._models import describe, latency_stats, opened
from .datasets import open_dataset
from .metrics import Metric, make_metric
from .problem import Problem, as_problem

__all__ = ["EvaluationReport", "evaluate", "strict_json"]


@dataclass
class EvaluationReport:
    """What :func:`evaluate` measured.

    Attributes:
        model: name, platform, source and executor of the model.
        data: the dataset's description and counts.
        metrics: metric name -> its values (scalars, and lists for a confusion matrix).
        batch_latencies_s: seconds inside ``infer`` for each batch.
        seconds_total: wall time of the whole run.
    """

    model: Dict[str, Any]
    data: Dict[str, Any]
    metrics: Dict[str, Dict[str, Any]]
    batch_latencies_s: Sequence[float] = field(default_factory=list)
    batch_sizes: Sequence[int] = field(default_factory=list)
    seconds_total: float = 0.0

    @property
    def seconds_in_infer(self) -> float:
        return float(sum(self.batch_latencies_s))

    @property
    def examples(self) -> int:
        return int(sum(self.batch_sizes))

    def to_json(self) -> Dict[str, Any]:
        total = self.seconds_total
        return {
            "neuropod_version": __version__,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "model": self.model,
            "data": {**self.data, "examples": self.examples, "batches": len(self.batch_sizes)},
            "metrics": self.metrics,
            "latency_ms": latency_stats(self.batch_latencies_s),
            "throughput_examples_per_s": self.examples / total if total > 0 else None,
            "time_s": {
                "total": total,
                "in_infer": self.seconds_in_infer,
                "outside_infer_fraction": 1 - self.seconds_in_infer / total if total > 0 else None,
            },
            "batch_latencies_ms": [s * 1e3 for s in self.batch_latencies_s],
            "batch_sizes": list(self.batch_sizes),
        }

    def write(self, report_dir: Union[str, os.PathLike[str]]) -> Tuple[Path, Path]:
        """Write ``report.json`` and a self-contained ``report.html`` into ``report_dir``; return both paths."""
        import json

        from .report import render_html

        directory = Path(report_dir)
        directory.mkdir(parents=True, exist_ok=True)
        data = self.to_json()
        json_path = directory / "report.json"
        json_path.write_text(json.dumps(strict_json(data), indent=2, allow_nan=False) + "\n", encoding="utf-8")
        html_path = directory / "report.html"
        html_path.write_text(render_html(data), encoding="utf-8")
        return json_path, html_path


def strict_json(value: Any) -> Any:
    """``value`` with NaN and infinities as None: JSON has no such numbers (a metric over no examples is NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: strict_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(item) for item in value]
    return value


def evaluate(
    model: Any,
    data: Any,
    *,
    problem: Any = None,
    metrics: Optional[Iterable[Any]] = None,
    labels: Optional[Mapping[str, str]] = None,
    batch_size: int = 32,
    report_dir: Union[None, str, os.PathLike[str]] = None,
    progress: ProgressMode = "auto",
    **load_options: Any,
) -> EvaluationReport:
    """Run ``model`` over ``data`` in batches; compute metrics; time every ``infer``.

    Args:
        model: a loaded Neuropod (left open), or a package path or server URL
            (loaded with ``load_options``, e.g. ``use_ope=True``, and closed).
        data: a dataset path, an iterable of example dicts, a dict of arrays
            or a :class:`~neuropod.tools.datasets.Dataset`.
        problem: a problem file or definition; its metrics, labels and batch
            symbol apply. Default: the model's own problem.
        metrics: metric names (``"top_k:k=3"``), dicts, callables or Metric
            objects; default: the problem's.
        labels: output name -> the data field with its truth.
        batch_size: examples per ``infer`` call (the last batch may be smaller).
        report_dir: when given, ``report.json`` and ``report.html`` are written there.
        progress: ``"auto"``, ``"bar"``, ``"log"`` or False.

    Returns:
        An :class:`EvaluationReport`.

    Raises:
        MetricError: a metric is unknown or the data lacks its label.
        DatasetError: the data cannot be read or does not fit the problem.
    """
    with opened(model, **load_options) as loaded:
        spec = as_problem(problem) if problem is not None else Problem(loaded.problem, name=loaded.name)
        dataset = open_dataset(data, _with_model_inputs(spec, loaded.problem))
        entries = list(metrics) if metrics is not None else list(spec.metrics)
        built: List[Metric] = [make_metric(entry) for entry in entries]
        label_map = {**spec.labels, **(labels or {})}
        input_names = tuple(s.name for s in loaded.problem.inputs)
        output_names = [s.name for s in loaded.problem.outputs]
        # Compact arrays: two numbers per batch, whatever the dataset's size.
        latencies = array.array("d")
        sizes = array.array("q")
        infer = loaded.infer
        perf_counter = time.perf_counter
        # Bind the metrics to the data's fields now when the source knows them (then only the fields
        # needed are read: a Parquet table's other columns, a label nobody scores), else at the first batch.
        needed = None
        if dataset.field_names is not None:
            _bind(built, input_names, output_names, dataset.field_names, label_map)
            needed = set(input_names) | {name for metric in built for name in metric.label_fields()}
        bound = needed is not None
        start = perf_counter()
        with Progress(f"evaluate {loaded.name}", dataset.num_examples, "examples", progress) as bar:
            advance = bar.advance if bar.mode != "off" else None
            for batch in dataset.batches(batch_size, needed):
                inputs = {name: batch[name] for name in input_names if name in batch}
                if not bound:
                    _bind(built, input_names, output_names, list(batch), label_map)
                    bound = True
                began = perf_counter()
                outputs = infer(inputs)
                latencies.append(perf_counter() - began)
                for metric in built:
                    metric.update(outputs, batch)
                rows = len(next(iter(batch.values()))) if dataset.batched and batch else 1
                sizes.append(rows)
                if advance is not None:
                    advance(rows)
        total = perf_counter() - start
        results: Dict[str, Dict[str, Any]] = {}
        for metric in built:
            results[metric.name if metric.name not in results else f"{metric.name}_{len(results)}"] = metric.result()
        report = EvaluationReport(
            model=describe(loaded, model),
            data={"source": dataset.description, "batch_size": batch_size},
            metrics=results,
            batch_latencies_s=latencies,
            batch_sizes=sizes,
            seconds_total=total,
        )
    if report_dir is not None:
        report.write(report_dir)
    return report


def _bind(
    metrics: List[Metric],
    input_names: Sequence[str],
    output_names: List[str],
    field_names: Sequence[str],
    labels: Mapping[str, str],
) -> None:
    if input_names and not set(input_names) & set(field_names):
        raise SpecError(
            f"data: none of the model's inputs ({', '.join(sorted(input_names))}) is a field of "
            f"the data ({', '.join(sorted(field_names))})"
        )
    fields = [name for name in field_names if name not in input_names]
    for metric in metrics:
        metric.bind(output_names, fields, labels)


def _with_model_inputs(problem: Problem, model_definition: Any) -> Problem:
    """The problem to read data with: a file's batch symbol and labels, the model's input specs for casting."""
    if problem.definition == model_definition:
        return problem
    return Problem(
        model_definition, batch_symbol=problem.batch_symbol if _has_symbol(model_definition, problem) else None
    )


def _has_symbol(definition: Any, problem: Problem) -> bool:
    symbol = problem.batch_symbol
    return symbol is not None and any(symbol in spec.shape for spec in definition.inputs)
