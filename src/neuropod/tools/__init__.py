"""Problem-agnostic tools: problem files, ``check``, datasets, ``evaluate``, ``compare``, ``InputBuilder``, ``bench``.

Every tool works through the one ``Neuropod`` API, so it runs any model in
any framework, in-process, in a worker process or on a server. Importing
``neuropod.tools`` imports no framework, and pyarrow / matplotlib / rich
only when a Parquet file, an HTML report or a terminal progress bar needs them.
"""

from __future__ import annotations

from .benchmark import BenchResult, bench
from .comparison import Agreement, Comparison, ProblemMismatchError, compare
from .datasets import Dataset, DatasetError, open_dataset
from .evaluation import EvaluationReport, evaluate
from .inputs import Feature, InputBuilder, InputPlan
from .metrics import Metric, MetricError, metric_names, register_metric
from .problem import Problem, ProblemCheck, as_problem, check_problem, load_problem

__all__ = [
    "Agreement",
    "BenchResult",
    "Comparison",
    "Dataset",
    "DatasetError",
    "EvaluationReport",
    "Feature",
    "InputBuilder",
    "InputPlan",
    "Metric",
    "MetricError",
    "Problem",
    "ProblemCheck",
    "ProblemMismatchError",
    "as_problem",
    "bench",
    "check_problem",
    "compare",
    "evaluate",
    "load_problem",
    "metric_names",
    "open_dataset",
    "register_metric",
]
