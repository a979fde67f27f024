"""The ``check``, ``evaluate``, ``compare`` and ``bench`` commands (registered on ``neuropod`` by ``neuropod.cli``)."""

from __future__ import annotations

import json
import math
import sys
from typing import Any, Dict, List, Optional, Tuple

import click

from .._cli_errors import user_errors
from .._cli_types import Duration

__all__ = ["COMMANDS"]


def _pairs(values: Tuple[str, ...], option: str, convert: Any = str) -> Dict[str, Any]:
    result = {}
    for value in values:
        key, sep, item = value.partition("=")
        if not sep or not key or not item:
            raise click.BadParameter(f"{value!r}: expected NAME=VALUE", param_hint=option)
        try:
            result[key] = convert(item)
        except ValueError:
            raise click.BadParameter(f"{value!r}: {item!r} is not a valid value", param_hint=option) from None
    return result


def _number(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.6g}"
    return str(value)


def _print_json(data: Any) -> None:
    from .evaluation import strict_json

    click.echo(json.dumps(strict_json(data), indent=2, default=str, allow_nan=False))


@click.command()
@click.argument("path", metavar="PATH")
@click.option("--problem", "problem_file", required=True, help="problem.json or a Python problem module.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@user_errors
def check(path: str, problem_file: str, as_json: bool) -> None:
    """Say whether model PATH (a package or a model URL) implements a problem, and exactly where not.

    Exit 1 when it does not.
    """
    from .problem import check_problem, load_problem

    problem = load_problem(problem_file)
    result = check_problem(path, problem)
    if as_json:
        _print_json({"ok": result.ok, "errors": result.errors, "warnings": result.warnings})
    else:
        name = f" {problem.name!r}" if problem.name else ""
        for warning in result.warnings:
            click.echo(f"warning: {warning}")
        if result.ok:
            click.echo(f"OK: {path} implements the problem{name} ({problem_file})")
        else:
            click.echo(f"FAILED: {path} does not implement the problem{name} ({problem_file}):", err=True)
            for error in result.errors:
                click.echo(f"  - {error}", err=True)
    if not result.ok:
        sys.exit(1)


@click.command()
@click.argument("path", metavar="PATH")
@click.option("--data", required=True, help="A dataset: .npz/.npy directory, .npz, Parquet or Arrow file.")
@click.option("--problem", "problem_file", default=None, help="problem.json or module: metrics, labels, batch symbol.")
@click.option("--metric", "metrics", multiple=True, metavar="NAME[:K=V,...]", help="A metric (repeatable).")
@click.option(
    "--labels", "labels", multiple=True, metavar="OUTPUT=FIELD", help="The data field with an output's truth."
)
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(1))
@click.option("--report", "report_dir", default=None, type=click.Path(file_okay=False), help="Write report.json/html.")
@click.option("--use-ope", is_flag=True, help="Run the model in a worker process.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@user_errors
def evaluate(
    path: str,
    data: str,
    problem_file: Optional[str],
    metrics: Tuple[str, ...],
    labels: Tuple[str, ...],
    batch_size: int,
    report_dir: Optional[str],
    use_ope: bool,
    as_json: bool,
) -> None:
    """Run model PATH (a package or a model URL) over a dataset: metrics, latency, report.json and report.html."""
    if report_dir:  # before the evaluation: a missing extra must not cost the run
        from ..extras import require

        require("matplotlib", "tools", "neuropod evaluate --report")
    from .evaluation import evaluate as run_evaluation

    options: Dict[str, Any] = {"use_ope": True} if use_ope else {}
    report = run_evaluation(
        path,
        data,
        problem=problem_file,
        metrics=list(metrics) if metrics else None,
        labels=_pairs(labels, "--labels"),
        batch_size=batch_size,
        report_dir=report_dir,
        **options,
    )
    summary = report.to_json()
    if as_json:
        summary.pop("batch_latencies_ms")
        summary.pop("batch_sizes")
        _print_json(summary)
        return
    click.echo(f"{summary['model']['name']} ({summary['model']['platform']}) on {summary['data']['source']}:")
    click.echo(
        f"  {summary['data']['examples']} examples in {summary['data']['batches']} batches of up to {batch_size}"
    )
    for name, values in summary["metrics"].items():
        scalars = ", ".join(f"{k}={_number(v)}" for k, v in values.items() if not isinstance(v, (list, dict)))
        click.echo(f"  {name}: {scalars}")
    latency = summary["latency_ms"]
    click.echo(
        f"  latency per batch: p50 {_number(latency['p50'])} ms, p90 {_number(latency['p90'])} ms, "
        f"p99 {_number(latency['p99'])} ms; {_number(summary['throughput_examples_per_s'])} examples/s"
    )
    if report_dir:
        click.echo(f"  wrote {report_dir}/report.json and {report_dir}/report.html")


@click.command()
@click.argument("paths", nargs=-1, required=True, metavar="PATH...")
@click.option("--data", default=None, help="A dataset (default: random inputs generated from the spec).")
@click.option("--problem", "problem_file", default=None, help="problem.json or module: the problem and tolerances.")
@click.option("--rtol", type=click.FloatRange(0), default=None, help="Relative tolerance (default: problem's or 1e-5).")
@click.option("--atol", type=click.FloatRange(0), default=None, help="Absolute tolerance (default: problem's or 1e-6).")
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(1))
@click.option("--batches", default=4, show_default=True, type=click.IntRange(1), help="Batches of generated inputs.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@user_errors
def compare(
    paths: Tuple[str, ...],
    data: Optional[str],
    problem_file: Optional[str],
    rtol: Optional[float],
    atol: Optional[float],
    batch_size: int,
    batches: int,
    as_json: bool,
) -> None:
    """Check models (each PATH a package or a model URL) implement one problem and agree on the same inputs.

    Exit 1 when they do not.
    """
    from ..errors import ProblemMismatchError
    from .comparison import compare as run_comparison

    if len(paths) < 2:
        raise click.UsageError("compare needs two or more models")
    try:
        result = run_comparison(
            list(paths), data, problem=problem_file, rtol=rtol, atol=atol, batch_size=batch_size, batches=batches
        )
    except ProblemMismatchError as exc:
        click.echo(f"FAILED: {exc}", err=True)
        sys.exit(1)
    if as_json:
        _print_json(result.to_json())
    else:
        _print_comparison(result, list(paths))
    if not result.ok:
        sys.exit(1)


def _print_comparison(result: Any, models: List[str]) -> None:
    click.echo(f"reference: {models[0]}; {result.examples} examples")
    click.echo(f"{'output':<12}{'model':<44}{'within':>9}{'max abs':>12}{'max rel':>12}  first mismatch")
    for agreement in result.agreements:
        first = ""
        if agreement.shape_mismatch:
            first = f"shape {agreement.shape_mismatch}"
        elif agreement.mismatches:
            item = agreement.mismatches[0]
            first = f"{item['index']}: {item['reference']!r} vs {item['value']!r}"
        within = "exact" if agreement.exact and agreement.ok else f"{agreement.fraction_within:.2%}"
        click.echo(
            f"{agreement.output:<12}{agreement.model[-43:]:<44}{within:>9}{_number(agreement.max_abs_error):>12}"
            f"{_number(agreement.max_rel_error):>12}  {first}"
        )
    click.echo("latency per call (ms):")
    for label, stats in result.to_json()["latency_ms"].items():
        click.echo(f"  {label[-50:]:<52} p50 {_number(stats['p50']):>9}  p99 {_number(stats['p99']):>9}")
    for warning in result.warnings:
        click.echo(f"warning: {warning}")
    click.echo("OK: every output agrees" if result.ok else "FAILED: outputs disagree past the tolerance")


@click.command()
@click.argument("path", metavar="PATH")
@click.option(
    "--mode",
    "modes",
    multiple=True,
    metavar="inprocess|ope|URL",
    help="Where to run (repeatable: the modes side by side). Default: inprocess, or PATH itself when it is a URL.",
)
@click.option("--use-ope", is_flag=True, help="Run the model in worker processes: the same as --mode ope.")
@click.option("--batch-size", default=1, show_default=True, type=click.IntRange(1))
@click.option(
    "--batch", "batch_alias", type=click.IntRange(1), hidden=True, help="Deprecated spelling of --batch-size."
)
@click.option("--concurrency", default=1, show_default=True, type=click.IntRange(1))
@click.option(
    "--duration",
    default="5s",
    show_default=True,
    type=Duration(positive=True),
    help="How long to measure (5s, 1m; a bare number: seconds).",
)
@click.option("--warmup", default="1s", show_default=True, type=Duration(), help="How long to run first, not recorded.")
@click.option("--data", default=None, help="Take the inputs from a dataset (default: generated from the spec).")
@click.option("--dim", "dims", multiple=True, metavar="SYMBOL=N", help="Size of a symbol in generated inputs.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@user_errors
def bench(
    path: str,
    modes: Tuple[str, ...],
    use_ope: bool,
    batch_size: int,
    batch_alias: Optional[int],
    concurrency: int,
    duration: float,
    warmup: float,
    data: Optional[str],
    dims: Tuple[str, ...],
    as_json: bool,
) -> None:
    """Latency p50/p90/p99 and throughput of model PATH (a package or a model URL), per mode, side by side."""
    from ..urls import is_model_url
    from .benchmark import bench as run_bench

    if batch_alias is not None:
        click.echo("warning: --batch is deprecated; it is spelled --batch-size, as in every other command", err=True)
        batch_size = batch_alias
    chosen = list(modes)
    if use_ope and "ope" not in chosen:
        chosen.append("ope")
    if not chosen:
        chosen = [path] if is_model_url(path) else ["inprocess"]
    results = run_bench(
        path,
        modes=chosen,
        batch_size=batch_size,
        concurrency=concurrency,
        duration=duration,
        warmup=warmup,
        data=data,
        dims=_pairs(dims, "--dim", int),
    )
    if as_json:
        _print_json([result.to_json() for result in results])
        return
    click.echo(
        f"{'mode':<36}{'batch':>6}{'conc':>6}{'calls':>9}{'p50 ms':>10}{'p90 ms':>10}{'p99 ms':>10}"
        f"{'calls/s':>11}{'examples/s':>12}"
    )
    for result in results:
        latency = result.latency_ms
        click.echo(
            f"{result.mode[-35:]:<36}{result.batch_size:>6}{result.concurrency:>6}{result.calls:>9}"
            f"{latency['p50']:>10.3f}{latency['p90']:>10.3f}{latency['p99']:>10.3f}"
            f"{result.calls_per_s:>11.1f}{result.examples_per_s:>12.1f}"
        )


COMMANDS = (check, evaluate, compare, bench)
