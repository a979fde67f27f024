"""Datasets in the forms users hold, read in batches and streamed (never loaded whole).

Sources:

- a directory of ``.npz`` files, each one example or one batch (told apart by
  the rank of the inputs against the problem's specs);
- a directory of ``NAME.npy`` files, each holding every example of one field
  along axis 0 (memory-mapped);
- a Parquet file or directory, or an Arrow IPC / Feather file (``pyarrow``):
  scalar columns become 1-D arrays, list / fixed-size-list / fixed-shape-tensor
  columns become stacked arrays, string columns unicode arrays;
- from Python, any iterable of dicts (one example each) or one dict of arrays
  (every example along axis 0).

Every field the model does not take as an input travels along as a label.
Inputs are cast to their spec's dtype when the cast keeps their kind
(``float64`` to ``float32``, ``int64`` to ``int32``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Union

import numpy as np

from ..errors import DatasetError
from .problem import Problem

__all__ = ["Dataset", "open_dataset", "DatasetError"]

Batch = Dict[str, np.ndarray]
_ARROW_SUFFIXES = (".arrow", ".feather", ".ipc")


def _rows(batch: Mapping[str, np.ndarray]) -> int:
    return len(next(iter(batch.values()))) if batch else 0


class Dataset:
    """A stream of examples, read in batches.

    Args:
        chunks: a function returning a fresh iterator of chunks (dicts of
            arrays sharing axis 0 as the example axis) — or, when the problem
            has no batch dimension, of single examples fed one per call.
        num_examples: how many examples there are, when known (for progress and ETA).
        description: what the data is, for reports.
        batched: whether axis 0 is an example axis (False: each chunk is one call).
    """

    def __init__(
        self,
        chunks: Callable[[], Iterator[Batch]],
        num_examples: Optional[int],
        description: str,
        batched: bool = True,
    ) -> None:
        self._chunks = chunks
        self.num_examples = num_examples
        self.description = description
        self.batched = batched

    def batches(self, batch_size: int) -> Iterator[Batch]:
        """Batches of exactly ``batch_size`` examples; the last one may be smaller."""
        if batch_size < 1:
            raise DatasetError(f"batch_size: expected a positive int, got {batch_size}")
        if not self.batched:
            yield from self._chunks()
            return
        pending: List[Batch] = []
        count = 0
        for chunk in self._chunks():
            size = _rows(chunk)
            if not pending and size == batch_size:  # the common case: pass through without copying
                yield chunk
                continue
            start = 0
            while start < size:
                take = min(batch_size - count, size - start)
                pending.append({k: v[start : start + take] for k, v in chunk.items()})
                count += take
                start += take
                if count == batch_size:
                    yield _concat(pending)
                    pending, count = [], 0
        if pending:
            yield _concat(pending)

    def __repr__(self) -> str:
        return f"<Dataset {self.description} examples={self.num_examples}>"


def _concat(parts: List[Batch]) -> Batch:
    if len(parts) == 1:
        return parts[0]
    keys = parts[0].keys()
    for part in parts[1:]:
        if part.keys() != keys:
            raise DatasetError(f"dataset: one chunk has fields {sorted(keys)}, another {sorted(part.keys())}")
    return {key: np.concatenate([part[key] for part in parts]) for key in keys}


class _Fields:
    """What the problem says about fields: casting inputs and telling examples from batches."""

    def __init__(self, problem: Optional[Problem]) -> None:
        self.specs = {spec.name: spec for spec in problem.inputs} if problem is not None else {}
        self.batched = problem is None or problem.batch_dim() is not None or _dim0_free(problem)

    def cast(self, fields: Mapping[str, Any], source: str) -> Batch:
        result = {}
        for name, value in fields.items():
            array = np.asarray(value)
            spec = self.specs.get(name)
            if spec is not None and spec.dtype != "string" and array.dtype != spec.numpy_dtype:
                if np.can_cast(array.dtype, spec.numpy_dtype, "same_kind"):
                    array = array.astype(spec.numpy_dtype)
            elif spec is not None and spec.dtype == "string" and array.dtype.kind == "O":
                array = array.astype(str)
            result[name] = array
        return result

    def is_example(self, fields: Mapping[str, np.ndarray], source: str) -> bool:
        """True when the file holds one example (inputs lack the batch axis), False for a batch."""
        if not self.batched:
            return True
        verdicts = set()
        for name, array in fields.items():
            spec = self.specs.get(name)
            if spec is None:
                continue
            rank = len(spec.shape)
            if array.ndim == rank - 1:
                verdicts.add(True)
            elif array.ndim == rank:
                verdicts.add(False)
            else:
                raise DatasetError(
                    f"{source}: field {name!r} has rank {array.ndim} (shape {list(array.shape)}); the input spec "
                    f"{list(spec.shape)} wants rank {rank} for a batch or {rank - 1} for one example"
                )
        if len(verdicts) > 1:
            raise DatasetError(f"{source}: some inputs are single examples and others batches")
        return verdicts.pop() if verdicts else False


def _dim0_free(problem: Problem) -> bool:
    """Remote models lose symbols: every input starting with a free dimension is batched along axis 0."""
    return bool(problem.inputs) and all(spec.shape and not isinstance(spec.shape[0], int) for spec in problem.inputs)


def _npz_dataset(files: List[Path], fields: _Fields, description: str) -> Dataset:
    def chunks() -> Iterator[Batch]:
        for file in files:
            try:
                with np.load(file, allow_pickle=False) as data:
                    loaded = {name: data[name] for name in data.files}
            except (OSError, ValueError) as exc:
                raise DatasetError(f"{file}: cannot read as .npz: {exc}") from None
            arrays = fields.cast(loaded, str(file))
            if fields.batched and fields.is_example(arrays, str(file)):
                arrays = {k: v[np.newaxis] for k, v in arrays.items()}
            yield arrays

    return Dataset(chunks, None, description, fields.batched)


def _npy_dataset(files: List[Path], fields: _Fields, description: str) -> Dataset:
    if not fields.batched:
        raise DatasetError(f"{description}: .npy files hold examples along axis 0, but the problem has no batch axis")
    arrays: Dict[str, np.ndarray] = {}
    for file in files:
        try:
            arrays[file.stem] = np.load(file, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise DatasetError(f"{file}: cannot read as .npy: {exc}") from None
    return _arrays_dataset(arrays, fields, description)


def _arrays_dataset(arrays: Mapping[str, np.ndarray], fields: _Fields, description: str) -> Dataset:
    lengths = {name: len(array) for name, array in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise DatasetError(f"{description}: fields hold different numbers of examples: {lengths}")
    total = next(iter(lengths.values()), 0)
    step = 4096  # slices of a memory map stay lazy; the batcher cuts them to size

    def chunks() -> Iterator[Batch]:
        for start in range(0, total, step):
            yield fields.cast({k: np.asarray(v[start : start + step]) for k, v in arrays.items()}, description)

    return Dataset(chunks, total, description)


def _examples_dataset(examples: Iterable[Mapping[str, Any]], fields: _Fields, description: str) -> Dataset:
    total = len(examples) if hasattr(examples, "__len__") else None  # type: ignore[arg-type]
    group = 256

    def chunks() -> Iterator[Batch]:
        if not fields.batched:
            for example in examples:
                yield fields.cast(example, description)
            return
        buffer: List[Mapping[str, Any]] = []
        for example in examples:
            if not isinstance(example, Mapping):
                raise DatasetError(f"{description}: expected dicts of field -> value, got {type(example).__name__}")
            buffer.append(example)
            if len(buffer) == group:
                yield _stack(buffer, fields, description)
                buffer = []
        if buffer:
            yield _stack(buffer, fields, description)

    return Dataset(chunks, total, description, fields.batched)


def _stack(examples: List[Mapping[str, Any]], fields: _Fields, description: str) -> Batch:
    keys = list(examples[0])
    stacked = {}
    for key in keys:
        try:
            stacked[key] = np.stack([np.asarray(example[key]) for example in examples])
        except KeyError:
            raise DatasetError(f"{description}: an example lacks field {key!r} that others have") from None
        except ValueError as exc:
            raise DatasetError(f"{description}: field {key!r}: examples of different shapes: {exc}") from None
    return fields.cast(stacked, description)


def _arrow_to_numpy(column: Any, name: str, source: str) -> np.ndarray:
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    kind = column.type
    if column.null_count:
        raise DatasetError(f"{source}: column {name!r} has {column.null_count} null value(s)")
    if isinstance(kind, pa.FixedShapeTensorType):
        return column.to_numpy_ndarray()
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        rows = len(column)
        if pa.types.is_fixed_size_list(kind):
            size = kind.list_size
        else:
            lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
            if rows and (lengths != lengths[0]).any():
                raise DatasetError(
                    f"{source}: column {name!r}: lists of different lengths ({lengths.min()} to {lengths.max()}) "
                    "cannot form one tensor"
                )
            size = int(lengths[0]) if rows else 0
        values = _arrow_to_numpy(column.flatten(), name, source)
        return values.reshape((rows, size) + values.shape[1:])
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return np.array(column.to_pylist(), dtype=str)
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        return np.array(column.to_pylist(), dtype=bytes)
    return column.to_numpy(zero_copy_only=False)


def _arrow_dataset(path: Path, fields: _Fields, description: str) -> Dataset:
    try:
        import pyarrow.dataset as pads
    except ImportError as exc:
        raise DatasetError(f"{path}: reading Parquet/Arrow needs pyarrow: pip install 'neuropod[tools]'") from exc
    if not fields.batched:
        raise DatasetError(f"{description}: a table holds one example per row, but the problem has no batch axis")
    file_format = "ipc" if path.suffix in _ARROW_SUFFIXES else "parquet"
    try:
        table = pads.dataset(str(path), format=file_format)
        total = table.count_rows()
    except Exception as exc:  # pyarrow raises its own ArrowInvalid / OSError family
        raise DatasetError(f"{path}: cannot read as {file_format}: {exc}") from None

    def chunks() -> Iterator[Batch]:
        for record_batch in table.to_batches(batch_size=4096):
            columns = {
                name: _arrow_to_numpy(record_batch.column(i), name, str(path))
                for i, name in enumerate(record_batch.schema.names)
            }
            yield fields.cast(columns, str(path))

    return Dataset(chunks, total, description)


def open_dataset(source: Any, problem: Optional[Problem] = None) -> Dataset:
    """A :class:`Dataset` over ``source``.

    Args:
        source: a path (a directory of ``.npz`` or ``.npy`` files, a ``.npz``
            file, a Parquet file or directory, an ``.arrow``/``.feather``
            file), a Dataset, an iterable of example dicts, or a dict of arrays.
        problem: the problem the data is for: its input specs tell an example
            from a batch and give the dtypes inputs are cast to.

    Raises:
        DatasetError: the source is missing, unreadable or of an unknown kind.
    """
    if isinstance(source, Dataset):
        return source
    fields = _Fields(problem)
    if isinstance(source, (str, os.PathLike)):
        return _open_path(Path(source), fields)
    if isinstance(source, Mapping):
        if not fields.batched:
            return Dataset(lambda: iter([fields.cast(source, "dict")]), 1, "a dict of arrays", False)
        return _arrays_dataset({k: np.asarray(v) for k, v in source.items()}, fields, "a dict of arrays")
    if isinstance(source, Iterable):
        return _examples_dataset(source, fields, f"an iterable ({type(source).__name__})")
    raise DatasetError(f"data: expected a path, an iterable of dicts or a dict of arrays; got {type(source).__name__}")


def _open_path(path: Path, fields: _Fields) -> Dataset:
    if not path.exists():
        raise DatasetError(f"data {str(path)!r}: no such file or directory")
    if path.is_file():
        if path.suffix == ".npz":
            return _npz_dataset([path], fields, str(path))
        if path.suffix == ".parquet" or path.suffix in _ARROW_SUFFIXES:
            return _arrow_dataset(path, fields, str(path))
        raise DatasetError(f"data {str(path)!r}: unknown file type; expected .npz, .parquet, .arrow or .feather")
    npz = sorted(path.glob("*.npz"))
    npy = sorted(path.glob("*.npy"))
    parquet = sorted(path.glob("*.parquet"))
    kinds = [kind for kind, files in (("npz", npz), ("npy", npy), ("parquet", parquet)) if files]
    if len(kinds) != 1:
        found = ", ".join(kinds) or "none of .npz, .npy, .parquet"
        raise DatasetError(f"data {str(path)!r}: expected one kind of file (.npz, .npy or .parquet), found {found}")
    if npz:
        return _npz_dataset(npz, fields, f"{path} ({len(npz)} .npz files)")
    if npy:
        return _npy_dataset(npy, fields, f"{path} ({len(npy)} .npy fields)")
    return _arrow_dataset(path, fields, f"{path} (Parquet)")


PathOrData = Union[str, "os.PathLike[str]", Dataset, Iterable[Mapping[str, Any]], Mapping[str, Any]]
