"""``evaluate`` / ``neuropod evaluate`` on real packages of three frameworks, a worker process and a server;
the HTML report rendered by headless Chromium."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any, Dict, Iterator, List

import numpy as np
import pytest
from click.testing import CliRunner
from tools_fixtures import addition_fixture, server_url_fixture  # noqa: F401  (fixtures)

from conftest import require, require_command
from neuropod.cli import main
from neuropod.packagers import create_placeholder_neuropod
from neuropod.tools import Metric, evaluate

ROWS = 37  # not a multiple of the batch size: the last batch is partial


def addition_data(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((ROWS, 4)).astype(np.float32)
    y = rng.standard_normal((ROWS, 4)).astype(np.float32)
    folder = tmp_path / "data"
    folder.mkdir()
    for name, array in {"x": x, "y": y, "sum": x + y}.items():
        np.save(folder / f"{name}.npy", array)
    return folder


@pytest.mark.parametrize("where", ["torchscript", "onnx", "jax", "jax-ope", "remote"])
def test_evaluate_in_every_framework_and_place(
    addition: Dict[str, Path], server_url: str, tmp_path: Path, where: str
) -> None:
    target = server_url if where == "remote" else addition[where.split("-")[0]]
    options = {"use_ope": True} if where.endswith("ope") else {}
    report = evaluate(
        target,
        addition_data(tmp_path),
        metrics=["mae", "rmse", "r2"],
        labels={"out": "sum"},
        batch_size=8,
        report_dir=tmp_path / "report",
        progress="log",
        **options,
    )
    assert report.metrics["mae"]["mae"] == pytest.approx(0, abs=1e-6)
    assert report.metrics["r2"]["r2"] == pytest.approx(1)
    assert list(report.batch_sizes) == [8, 8, 8, 8, 5]
    assert len(report.batch_latencies_s) == 5 and report.seconds_in_infer <= report.seconds_total
    saved = json.loads((tmp_path / "report" / "report.json").read_text())
    assert saved["data"]["examples"] == ROWS and saved["metrics"]["rmse"]["rmse"] == pytest.approx(0, abs=1e-6)
    assert saved["model"]["executor"] == {"remote": "RemoteExecutor", "jax-ope": "OutOfProcessExecutor"}.get(
        where, "InProcessExecutor"
    )
    assert set(saved["latency_ms"]) == {"p50", "p90", "p99", "mean", "min", "max"}
    assert (tmp_path / "report" / "report.html").read_text().startswith("<!DOCTYPE html>")


def test_a_wrong_model_scores_badly(addition: Dict[str, Path], tmp_path: Path) -> None:
    report = evaluate(addition["placeholder"], addition_data(tmp_path), metrics=["mae"], labels={"out": "sum"})
    assert report.metrics["mae"]["mae"] > 0.5  # random outputs are not x + y


def classifier(tmp_path: Path) -> Path:
    return create_placeholder_neuropod(
        tmp_path / "classifier.zip",
        "classifier",
        [{"name": "pixels", "dtype": "float32", "shape": ["batch", 4]}],
        [{"name": "scores", "dtype": "float32", "shape": ["batch", 5]}],
        seed=1,
    )


def classification_data(tmp_path: Path) -> Path:
    rng = np.random.default_rng(1)
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(30):  # one example per file
        np.savez(folder / f"{i:03}.npz", pixels=rng.random(4, dtype=np.float32), label=np.int64(i % 5))
    return folder


def test_evaluate_command_writes_both_reports(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main,
        [
            "evaluate",
            str(classifier(tmp_path)),
            "--data",
            str(classification_data(tmp_path)),
            "--metric",
            "accuracy",
            "--metric",
            "top_k:k=2",
            "--metric",
            "confusion_matrix",
            "--batch-size",
            "7",
            "--report",
            str(tmp_path / "out"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "30 examples in 5 batches" in result.output and "top_2_accuracy=" in result.output
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    matrix = np.array(saved["metrics"]["confusion_matrix"]["confusion_matrix"])
    assert matrix.shape == (5, 5) and matrix.sum() == 30 and (matrix.sum(axis=1) == 6).all()
    assert saved["metrics"]["accuracy"]["accuracy"] == pytest.approx(np.trace(matrix) / 30)
    html = (tmp_path / "out" / "report.html").read_text()
    assert 'id="plot-latency"' in html and 'id="plot-confusion-confusion_matrix"' in html
    assert "http://" not in html and "https://" not in html  # self-contained


def test_evaluate_command_user_errors(tmp_path: Path) -> None:
    model, data = str(classifier(tmp_path)), str(classification_data(tmp_path))
    runner = CliRunner()
    unknown = runner.invoke(main, ["evaluate", model, "--data", data, "--metric", "nope"])
    assert unknown.exit_code == 2 and "'nope' is not known" in unknown.output
    no_label = runner.invoke(main, ["evaluate", model, "--data", data, "--metric", "mae", "--labels", "scores=gone"])
    assert no_label.exit_code == 2 and "no label field for output 'scores'" in no_label.output
    assert "Traceback" not in unknown.output + no_label.output


def chromium() -> str:
    return shutil.which("chromium-browser") or require_command("chromium")


def screenshot(html: Path, png: Path, profile: Path) -> np.ndarray:
    subprocess.run(
        [
            chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={profile}",
            f"--screenshot={png}",
            "--window-size=1200,2400",
            html.as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    import matplotlib.image

    return matplotlib.image.imread(str(png))


def coloured_pixels(image: np.ndarray) -> int:
    """Pixels whose channels differ a lot: plot colours, not the page's black, grey and white."""
    rgb = image[..., :3]
    return int(((rgb.max(axis=-1) - rgb.min(axis=-1)) > 0.25).sum())


def test_the_html_report_renders_its_plots_in_chromium(tmp_path: Path) -> None:
    require("matplotlib")
    evaluate(
        classifier(tmp_path),
        classification_data(tmp_path),
        metrics=["accuracy", "confusion_matrix"],
        report_dir=tmp_path / "report",
        batch_size=4,
    )
    html = tmp_path / "report" / "report.html"
    image = screenshot(html, tmp_path / "report.png", tmp_path / "profile")
    assert image.shape[0] > 1000 and image.std() > 0.05  # not a blank page
    plotted = coloured_pixels(image)
    assert plotted > 5000, plotted  # the histogram's bars, the metric bars and the confusion heat map
    # The same page with its images broken has (almost) none: the count measures the plots.
    broken = tmp_path / "broken.html"
    broken.write_text(html.read_text().replace("data:image/png;base64,", "data:image/png;base64,AAAA"))
    assert coloured_pixels(screenshot(broken, tmp_path / "broken.png", tmp_path / "profile2")) < plotted / 20


def test_an_empty_dataset_gives_null_metrics_in_strict_json(addition: Dict[str, Path], tmp_path: Path) -> None:
    empty = np.zeros((0, 4), np.float32)
    report = evaluate(
        addition["placeholder"],
        {"x": empty, "y": empty, "sum": empty},
        metrics=["mae"],
        labels={"out": "sum"},
        report_dir=tmp_path,
        progress=False,
    )
    assert report.examples == 0
    saved = json.loads((tmp_path / "report.json").read_text())  # strict JSON: NaN became null
    assert saved["metrics"]["mae"]["mae"] is None and saved["latency_ms"]["p50"] is None
    assert (tmp_path / "report.html").read_text().startswith("<!DOCTYPE html>")


def test_a_problem_module_brings_its_own_metric_function(addition: Dict[str, Path], tmp_path: Path) -> None:
    problem = tmp_path / "problem.py"
    problem.write_text(
        "from conftest import ADDITION_INPUTS, ADDITION_OUTPUTS\n"
        "INPUT_SPEC, OUTPUT_SPEC = ADDITION_INPUTS, ADDITION_OUTPUTS\n"
        "LABELS = {'out': 'sum'}\n"
        "def within_a_tenth(prediction, label):\n"
        "    return abs(prediction - label) <= 0.1\n"
        "METRICS = ['mae', within_a_tenth]\n"
    )
    result = CliRunner().invoke(
        main, ["evaluate", str(addition["onnx"]), "--data", str(addition_data(tmp_path)), "--problem", str(problem)]
    )
    assert result.exit_code == 0, result.output
    assert "within_a_tenth: within_a_tenth=1" in result.output and "mae: mae=0" in result.output


def test_evaluate_streams_the_data(addition: Dict[str, Path]) -> None:
    # A generator of 20,000 examples: evaluate must pull them batch by batch, never the whole stream first.
    produced = [0]
    lead: List[int] = []

    def examples() -> Iterator[Dict[str, np.ndarray]]:
        row = np.ones(4, np.float32)
        for _ in range(20_000):
            produced[0] += 1
            yield {"x": row, "y": row, "sum": row + row}

    class Lead(Metric):
        def __init__(self, name: str = "lead", **options: Any) -> None:
            super().__init__(name, **options)
            self.seen = 0

        def update(self, outputs: Any, fields: Any) -> None:
            self.seen += len(fields["sum"])
            lead.append(produced[0] - self.seen)

        def result(self) -> Dict[str, Any]:
            return {"seen": self.seen}

    report = evaluate(addition["torchscript"], examples(), metrics=[Lead(label="sum")], batch_size=100, progress=False)
    assert report.metrics["lead"] == {"seen": 20_000}
    assert max(lead) <= 512  # examples are stacked a few hundred at a time, however long the stream
