"""``InputBuilder`` (features computed once for many models) and ``bench`` / ``neuropod bench``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import pytest
from click.testing import CliRunner
from tools_fixtures import addition_fixture, server_url_fixture  # noqa: F401  (fixtures)

from neuropod import DatasetError, SpecError, load_neuropod
from neuropod.cli import main
from neuropod.packagers import create_placeholder_neuropod
from neuropod.tools import InputBuilder, bench

RAW = [{"values": [float(i), float(i) + 1, float(i) + 2, float(i) + 3], "text": f"example {i}"} for i in range(6)]


def five_features() -> InputBuilder:
    builder = InputBuilder()
    for index, name in enumerate("abcde"):
        builder.feature(name, "float32", ("batch",))(lambda example, index=index: example["values"][index % 4] * 10)
    return builder


def test_three_models_sharing_five_features_compute_five(tmp_path: Path) -> None:
    models = []
    for number, names in enumerate(("abc", "bcd", "cde")):
        specs = [{"name": n, "dtype": "float32", "shape": ["batch"]} for n in names]
        path = create_placeholder_neuropod(
            tmp_path / f"m{number}.zip", f"m{number}", specs, [{"name": "o", "dtype": "float32", "shape": ["batch"]}]
        )
        models.append(load_neuropod(path))
    builder = five_features()
    plan = builder.plan(models)
    per_model = plan.build(RAW)
    # Each of the 5 features ran once per example: 5 x 6 calls, not 9 x 6 (features per model summed).
    assert dict(builder.calls) == {name: len(RAW) for name in "abcde"}
    assert [sorted(inputs) for inputs in per_model] == [list("abc"), list("bcd"), list("cde")]
    np.testing.assert_array_equal(per_model[0]["a"], np.arange(6, dtype=np.float32) * 10)
    assert per_model[0]["b"] is per_model[1]["b"]  # one array, shared
    outputs = plan.infer(RAW)
    assert [o["o"].shape for o in outputs] == [(6,)] * 3
    for model in models:
        model.close()


def test_features_feed_real_models_of_three_frameworks(addition: Dict[str, Path]) -> None:
    builder = InputBuilder()
    builder.feature("x", "float32", ("batch", 4))(lambda example: example["values"])
    builder.feature("y", "float32", ("batch", 4))(lambda example: [len(example["text"])] * 4)
    builder.feature("unused", "string", ("batch",))(lambda example: example["text"])
    models = [load_neuropod(addition[name]) for name in ("torchscript", "onnx", "jax")]
    try:
        outputs = builder.plan(models).infer(RAW)
    finally:
        for model in models:
            model.close()
    expected = np.array([example["values"] for example in RAW], np.float32) + 9
    for output in outputs:
        np.testing.assert_array_equal(output["out"], expected)
    assert builder.calls == {"x": 6, "y": 6}  # "unused" is named by no model: never computed


def test_feature_specs_are_checked_when_the_plan_is_made(addition: Dict[str, Path]) -> None:
    builder = InputBuilder()
    builder.feature("x", "float64", ("batch", 4))(lambda example: example["values"])
    builder.feature("y", "float32", ("batch", 4, 1))(lambda example: example["values"])
    with load_neuropod(addition["onnx"]) as model:
        with pytest.raises(SpecError) as info:
            builder.plan([model])
    message = str(info.value)
    assert "model 'onnx_addition': input 'x': the feature says dtype float64, the model float32" in message
    assert "input 'y': the feature says rank 3" in message
    assert builder.calls == {}  # nothing ran
    with pytest.raises(SpecError, match="input 'y' has no feature"):
        InputBuilder().plan([load_neuropod(addition["placeholder"])])


def test_a_failing_or_misfit_feature_is_named_when_the_batch_is_built() -> None:
    builder = InputBuilder()

    @builder.feature("pixels", "float32", ("batch", 3))
    def pixels(example: Dict[str, Any]) -> Any:
        return example["png"]

    with pytest.raises(
        DatasetError, match=r"feature 'pixels': .*pixels\(\) failed on example 1 of the batch: KeyError"
    ):
        builder.compute(["pixels"], [{"png": [1, 2, 3]}, {}])
    with pytest.raises(SpecError, match=r"feature 'pixels': .*gave a batch of shape \[1, 4\]; the feature's spec says"):
        builder.compute(["pixels"], [{"png": [1, 2, 3, 4]}])
    with pytest.raises(SpecError, match=r"gave <U1 values, which do not convert to its spec's dtype float32"):
        builder.compute(["pixels"], [{"png": ["a", "b", "c"]}])


@pytest.mark.parametrize("framework", ["torchscript", "onnx", "jax"])
def test_bench_modes_side_by_side(addition: Dict[str, Path], server_url: str, framework: str) -> None:
    # (A worker process per caller would import torch twice: the command test below covers "ope" with JAX.)
    modes = ["inprocess", server_url] if framework == "torchscript" else ["inprocess"]
    results = bench(addition[framework], modes=modes, batch_size=4, concurrency=2, duration=0.3, warmup=0.1)
    assert [r.mode for r in results] == modes
    for result in results:
        assert result.calls > 0 and result.batch_size == 4 and result.concurrency == 2
        latency = result.latency_ms
        assert 0 < latency["min"] <= latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["max"]
        assert result.examples_per_s == pytest.approx(result.calls_per_s * 4)


def test_bench_command_json_and_table(addition: Dict[str, Path], tmp_path: Path) -> None:
    runner = CliRunner()
    args = ["bench", str(addition["jax"]), "--duration", "0.2", "--warmup", "0.05", "--batch-size", "3"]
    table = runner.invoke(main, args)
    assert table.exit_code == 0, table.output
    assert "p50 ms" in table.output and "inprocess" in table.output
    data = tmp_path / "d.npz"
    np.savez(data, x=np.ones((5, 2), np.float32), y=np.ones((5, 2), np.float32))
    as_json = runner.invoke(main, [*args, "--json", "--data", str(data), "--mode", "inprocess", "--use-ope"])
    assert as_json.exit_code == 0, as_json.output
    rows: List[Dict[str, Any]] = json.loads(as_json.stdout)
    assert [row["mode"] for row in rows] == ["inprocess", "ope"] and all(row["calls"] > 0 for row in rows)
    bad = runner.invoke(main, ["bench", str(addition["jax"]), "--mode", "gpu-cluster", "--duration", "0.1"])
    assert bad.exit_code == 2 and "bench mode 'gpu-cluster'" in bad.output and "Traceback" not in bad.output
