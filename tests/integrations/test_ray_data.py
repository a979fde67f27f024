"""Ray Data: a real local Ray running real packages over datasets with ``map_batches``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
from ray_models import make_counting_adder, ray_init_options

from conftest import require
from neuropod.errors import InputValidationError
from neuropod.spec import TensorSpec

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_data() -> Iterator[Any]:
    ray = require("ray")
    require("ray.data")
    ray.init(**ray_init_options())
    try:
        yield ray.data
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def adder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_counting_adder(tmp_path_factory.mktemp("data") / "adder")


def _dataset(ray_data: Any, rows: int) -> Any:
    # Python floats: Ray stores them as float64, the model takes float32.
    return ray_data.from_items([{"x": [float(i), 1.0], "y": [10.0, float(i)], "label": i} for i in range(rows)])


def test_predict_dataset_runs_the_package_in_batches(ray_data: Any, adder: Path) -> None:
    from neuropod.integrations.ray import predict_dataset

    predicted = predict_dataset(_dataset(ray_data, 10), adder, batch_size=4, concurrency=1, num_cpus=0.5)
    rows = sorted(predicted.take_all(), key=lambda row: row["label"])
    assert [row["label"] for row in rows] == list(range(10))  # other columns are kept
    for i, row in enumerate(rows):
        np.testing.assert_array_equal(row["out"], [i + 10.0, 1.0 + i])
        assert row["out"].dtype == np.float32
    # No call saw more rows than batch_size, and every row was computed exactly once.
    assert all(1 <= row["rows"] <= 4 for row in rows)


def test_outputs_only_and_autoscaling_actor_pool(ray_data: Any, adder: Path) -> None:
    from neuropod.integrations.ray import predict_dataset

    predicted = predict_dataset(
        _dataset(ray_data, 6), adder, batch_size=2, concurrency=(1, 2), num_cpus=0.5, keep_columns=False
    )
    rows = predicted.take_all()
    assert len(rows) == 6 and all(set(row) == {"out", "rows"} for row in rows)


def test_out_of_process_model_in_each_actor(ray_data: Any, adder: Path) -> None:
    from neuropod.integrations.ray import predict_dataset

    predicted = predict_dataset(_dataset(ray_data, 4), adder, batch_size=2, load_options={"use_ope": True})
    outs = sorted(float(row["out"][0]) for row in predicted.take_all())
    assert outs == [10.0, 11.0, 12.0, 13.0]


def test_a_dataset_without_the_models_columns_names_them(ray_data: Any, adder: Path) -> None:
    from neuropod.integrations.ray import predict_dataset

    dataset = ray_data.from_items([{"a": 1.0}, {"a": 2.0}])
    with pytest.raises(Exception) as caught:
        predict_dataset(dataset, adder).take_all()
    messages = _messages(caught.value)
    assert any("no column of the batch is one of its inputs" in m and "'a'" in m for m in messages), messages


def _messages(error: BaseException | None) -> list:
    messages = []
    while error is not None:  # Ray wraps the UDF's error; ours is in the chain
        messages.append(str(error))
        error = error.__cause__ or error.__context__
    return messages


def test_an_output_without_a_row_per_input_row_is_named(ray_data: Any, tmp_path: Path) -> None:
    from neuropod.integrations.ray import predict_dataset
    from neuropod.packagers import create_placeholder_neuropod

    summary = create_placeholder_neuropod(
        tmp_path / "summary",
        "summary",
        [{"name": "x", "dtype": "float32", "shape": ["batch"]}],
        [{"name": "stats", "dtype": "float32", "shape": [2]}],  # two numbers whatever the batch
        package_as_zip=False,
    )
    dataset = ray_data.from_items([{"x": float(i)} for i in range(4)])
    with pytest.raises(Exception) as caught:
        predict_dataset(dataset, summary, batch_size=4).take_all()
    assert any("output 'stats': a dataset column needs one row per input row" in m for m in _messages(caught.value))


def test_iter_dataset_batches(ray_data: Any) -> None:
    from neuropod.integrations.ray import iter_dataset_batches

    dataset = ray_data.from_items([{"s": w, "v": [i, i]} for i, w in enumerate("abcdefg")])
    batches = list(iter_dataset_batches(dataset, batch_size=3))
    assert [len(b["s"]) for b in batches] == [3, 3, 1]
    assert batches[0]["s"].dtype.kind == "U" and batches[0]["v"].shape == (3, 2)
    assert "".join("".join(b["s"]) for b in batches) == "abcdefg"
    assert [set(b) for b in iter_dataset_batches(dataset, batch_size=None, columns=["v"])][0] == {"v"}


def test_column_array_conversions() -> None:
    require("ray")
    from neuropod.integrations.ray.data import column_array

    strings = column_array("s", np.array(["a", b"b"], dtype=object))
    assert strings.dtype.kind == "U" and strings.tolist() == ["a", "b"]
    stacked = column_array("t", np.array([np.zeros(2), np.ones(2)], dtype=object))
    assert stacked.shape == (2, 2)
    floats = column_array("x", np.array([1.0, 2.0]), TensorSpec("x", "float32", (None,)))
    assert floats.dtype == np.float32
    ints = column_array("i", np.array([1.5]), TensorSpec("i", "int32", (None,)))
    assert ints.dtype == np.float64  # never a float -> int cast: validation names the mismatch instead
    ragged = np.empty(2, dtype=object)
    ragged[:] = [np.zeros(2), np.zeros(3)]
    with pytest.raises(InputValidationError, match="column 'r'.*different shapes"):
        column_array("r", ragged)


def test_evaluate_and_compare_read_a_ray_dataset(ray_data: Any, adder: Path) -> None:
    from neuropod.tools import compare, evaluate

    dataset = ray_data.from_items(
        [{"x": [float(i), 1.0], "y": [10.0, float(i)], "target": [i + 10.0, 1.0 + i]} for i in range(10)]
    )
    mae = {"name": "mae", "output": "out"}
    report = evaluate(adder, dataset, metrics=[mae], labels={"out": "target"}, batch_size=4, progress=False)
    assert report.metrics["mae"]["mae"] == pytest.approx(0, abs=1e-6)
    assert list(report.batch_sizes) == [4, 4, 2]
    assert report.data["source"] == "a Ray Dataset"  # read with iter_batches, not row by row as an iterable
    comparison = compare([adder, adder], dataset, batch_size=5, progress=False)
    assert comparison.ok and comparison.examples == 10
