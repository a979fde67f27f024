"""Datasets: .npz (examples or batches), .npy per field, Parquet and Arrow tables, Python iterables; batching."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest

from conftest import require
from neuropod import ProblemDefinition
from neuropod.errors import DatasetError
from neuropod.tools import Problem, open_dataset

PROBLEM = Problem(
    ProblemDefinition(
        [
            {"name": "x", "dtype": "float32", "shape": ["batch", 3]},
            {"name": "word", "dtype": "string", "shape": ["batch"]},
        ],
        [{"name": "out", "dtype": "float32", "shape": ["batch"]}],
    )
)
ROWS = 10
X = np.arange(ROWS * 3, dtype=np.float32).reshape(ROWS, 3)
WORDS = np.array([f"wörd{i}" for i in range(ROWS)])
LABELS = np.arange(ROWS, dtype=np.int64)


def collect(source: object, batch_size: int = 4, problem: Problem = PROBLEM) -> List[Dict[str, np.ndarray]]:
    return list(open_dataset(source, problem).batches(batch_size))


def check_batches(batches: List[Dict[str, np.ndarray]]) -> None:
    assert [len(b["x"]) for b in batches] == [4, 4, 2]  # the last partial batch is kept
    assert all(b["x"].dtype == np.float32 and b["word"].dtype.kind == "U" for b in batches)
    np.testing.assert_array_equal(np.concatenate([b["x"] for b in batches]), X)
    np.testing.assert_array_equal(np.concatenate([b["word"] for b in batches]), WORDS)
    np.testing.assert_array_equal(np.concatenate([b["label"] for b in batches]), LABELS)


def test_npz_directory_of_single_examples(tmp_path: Path) -> None:
    for i in range(ROWS):
        np.savez(tmp_path / f"{i:03}.npz", x=X[i], word=WORDS[i], label=LABELS[i])
    check_batches(collect(tmp_path))


def test_npz_directory_of_batches_is_rebatched(tmp_path: Path) -> None:
    for i, (start, stop) in enumerate([(0, 3), (3, 9), (9, 10)]):
        np.savez(tmp_path / f"{i}.npz", x=X[start:stop], word=WORDS[start:stop], label=LABELS[start:stop])
    check_batches(collect(tmp_path))


def test_npy_per_field_is_memory_mapped(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", X.astype(np.float64))  # cast to the spec's float32
    np.save(tmp_path / "word.npy", WORDS)
    np.save(tmp_path / "label.npy", LABELS)
    dataset = open_dataset(tmp_path, PROBLEM)
    assert dataset.num_examples == ROWS
    check_batches(list(dataset.batches(4)))


def test_python_iterables_and_dicts() -> None:
    examples = [{"x": X[i].tolist(), "word": str(WORDS[i]), "label": int(LABELS[i])} for i in range(ROWS)]
    check_batches(collect(examples))
    check_batches(collect(iter(examples)))  # a generator: length unknown, still batched
    check_batches(collect({"x": X, "word": WORDS, "label": LABELS}))


def test_parquet_and_arrow_tables(tmp_path: Path) -> None:
    pa = require("pyarrow")
    import pyarrow.feather as feather
    import pyarrow.parquet as pq

    table = pa.table(
        {
            "x": pa.array(X.tolist(), pa.list_(pa.float64())),
            "word": pa.array(WORDS.tolist()),
            "label": pa.array(LABELS),
        }
    )
    pq.write_table(table, tmp_path / "data.parquet", row_group_size=3)
    check_batches(collect(tmp_path / "data.parquet"))
    fixed = table.set_column(0, "x", pa.FixedSizeListArray.from_arrays(pa.array(X.ravel()), 3))
    feather.write_feather(fixed, tmp_path / "data.arrow")
    check_batches(collect(tmp_path / "data.arrow"))
    tensor_type = pa.fixed_shape_tensor(pa.float32(), [3])
    tensors = pa.ExtensionArray.from_storage(tensor_type, pa.FixedSizeListArray.from_arrays(pa.array(X.ravel()), 3))
    folder = tmp_path / "parts"
    folder.mkdir()
    pq.write_table(table.set_column(0, "x", tensors).slice(0, 6), folder / "a.parquet")
    pq.write_table(table.set_column(0, "x", tensors).slice(6), folder / "b.parquet")
    check_batches(collect(folder))


def test_only_the_fields_asked_for_are_read(tmp_path: Path) -> None:
    pa = require("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(
        pa.table({"x": pa.array(X.tolist()), "word": WORDS.tolist(), "label": LABELS}), tmp_path / "t.parquet"
    )
    (tmp_path / "npy").mkdir()
    np.save(tmp_path / "npy" / "x.npy", X)
    np.save(tmp_path / "npy" / "label.npy", LABELS)
    for source in (tmp_path / "t.parquet", tmp_path / "npy"):
        dataset = open_dataset(source, PROBLEM)
        assert "label" in dataset.field_names
        batches = list(dataset.batches(4, fields={"x"}))
        assert [sorted(b) for b in batches] == [["x"]] * 3
        np.testing.assert_array_equal(np.concatenate([b["x"] for b in batches]), X)


def test_nested_lists_become_higher_rank_tensors(tmp_path: Path) -> None:
    pa = require("pyarrow")
    import pyarrow.parquet as pq

    grid = np.arange(2 * 2 * 3, dtype=np.float32).reshape(2, 2, 3)
    pq.write_table(pa.table({"g": pa.array(grid.tolist())}), tmp_path / "g.parquet")
    problem = Problem(ProblemDefinition([{"name": "g", "dtype": "float32", "shape": ["b", 2, 3]}], []))
    (batch,) = collect(tmp_path / "g.parquet", problem=problem)
    np.testing.assert_array_equal(batch["g"], grid)


def test_ragged_lists_are_refused_with_the_column_name(tmp_path: Path) -> None:
    pa = require("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"x": pa.array([[1.0, 2.0, 3.0], [1.0]])}), tmp_path / "r.parquet")
    with pytest.raises(DatasetError, match="column 'x': lists of different lengths"):
        collect(tmp_path / "r.parquet")


def test_bad_sources(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no such file"):
        open_dataset(tmp_path / "nothing", PROBLEM)
    np.save(tmp_path / "x.npy", X)
    np.savez(tmp_path / "y.npz", x=X)
    with pytest.raises(DatasetError, match="expected one kind of file"):
        open_dataset(tmp_path, PROBLEM)
    bad = tmp_path / "bad"
    bad.mkdir()
    np.savez(bad / "0.npz", x=np.zeros((2, 2, 3), np.float32))
    with pytest.raises(DatasetError, match="field 'x' has rank 3"):
        collect(bad)


def test_a_problem_without_a_batch_axis_feeds_each_example_alone(tmp_path: Path) -> None:
    problem = Problem(ProblemDefinition([{"name": "x", "dtype": "float32", "shape": [3]}], []))
    for i in range(3):
        np.savez(tmp_path / f"{i}.npz", x=X[i])
    batches = collect(tmp_path, problem=problem)
    assert [b["x"].shape for b in batches] == [(3,)] * 3
