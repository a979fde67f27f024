"""Datasets in the forms users hold, read in batches and streamed (never loaded whole).

Sources:

- a directory of ``.npz`` files, each one example or one batch (told apart by
  the rank of the inputs against the problem's specs);
- a directory of ``NAME.npy`` files, each holding every example of one field
  along axis 0 (read batch by batch);
- a Parquet file or directory, or an Arrow IPC / Feather file (``pyarrow``):
  scalar columns become 1-D arrays, list / fixed-size-list / fixed-shape-tensor
  columns become stacked arrays, string columns unicode arrays;
- from Python, any iterable of dicts (one example each) or one dict of arrays
  (every example along axis 0);
- a Ray Dataset (``ray.data.Dataset``), read batch by batch with
  ``neuropod.integrations.ray.iter_dataset_batches``.

Every field the model does not take as an input travels along as a label.
Inputs are cast to their spec's dtype when the cast keeps their kind
(``float64`` to ``float32``, ``int64`` to ``int32``).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Callable, Collection, Dict, Iterable, Iterator, List, Mapping, Optional, Tuple

import numpy as np

from ..errors import DatasetError
from .problem import Problem

__all__ = ["Dataset", "open_dataset", "DatasetError"]

Batch = Dict[str, np.ndarray]
_ARROW_SUFFIXES = (".arrow", ".feather", ".ipc")
#: Files are read (and tables converted to numpy) in chunks of about this many bytes, at most this many rows.
_CHUNK_BYTES = 2**20
_MAX_CHUNK_ROWS = 65536


def _chunk_rows(batch_size: int, row_bytes: int) -> int:
    """Rows per chunk: a whole number of batches, about _CHUNK_BYTES, at least one batch."""
    rows = min(_MAX_CHUNK_ROWS, _CHUNK_BYTES // max(1, row_bytes))
    return max(batch_size, rows // batch_size * batch_size)


class Dataset:
    """A stream of examples, read in batches.

    Args:
        chunks: ``chunks(size, wanted)`` returns a fresh iterator of chunks
            (dicts of arrays sharing axis 0 as the example axis), ideally of
            ``size`` examples each — or, when the problem has no batch
            dimension, of single examples fed one per call. ``wanted`` names
            the fields to read (None: all); a source may return more.
        num_examples: how many examples there are, when known (for progress and ETA).
        description: what the data is, for reports.
        batched: whether axis 0 is an example axis (False: each chunk is one call).
        field_names: the fields, when known before reading (files with a header or schema).
    """

    def __init__(
        self,
        chunks: Callable[[int, Optional[Collection[str]]], Iterator[Batch]],
        num_examples: Optional[int],
        description: str,
        batched: bool = True,
        field_names: Optional[List[str]] = None,
    ) -> None:
        self._chunks = chunks
        self.field_names = field_names
        self.num_examples = num_examples
        self.description = description
        self.batched = batched

    def batches(self, batch_size: int, fields: Optional[Collection[str]] = None) -> Iterator[Batch]:
        """Batches of exactly ``batch_size`` examples; the last one may be smaller.

        Args:
            batch_size: examples per batch.
            fields: the fields needed; sources that can skip the others do (Parquet columns, .npy files).
        """
        if batch_size < 1:
            raise DatasetError(f"batch_size: expected a positive int, got {batch_size}")
        if not self.batched:
            yield from self._chunks(1, fields)
            return
        pending: List[Batch] = []  # pieces of the next batch, when chunks do not divide into batches
        count = 0
        for chunk in self._chunks(batch_size, fields):
            size = len(next(iter(chunk.values()))) if chunk else 0
            start = 0
            if pending:
                start = min(batch_size - count, size)
                pending.append({k: v[:start] for k, v in chunk.items()})
                count += start
                if count == batch_size:
                    yield _concat(pending)
                    pending, count = [], 0
            if start == 0 and size == batch_size:
                yield chunk  # the chunk is a batch: no slicing
                continue
            while size - start >= batch_size:  # whole batches are views of the chunk
                yield {k: v[start : start + batch_size] for k, v in chunk.items()}
                start += batch_size
            if start < size:
                pending.append({k: v[start:] for k, v in chunk.items()})
                count += size - start
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
        # Resolved once: cast() runs for every batch. None stands for strings.
        self._dtypes = {name: None if spec.dtype == "string" else spec.numpy_dtype for name, spec in self.specs.items()}

    def cast(self, fields: Mapping[str, Any], source: str) -> Batch:
        result = {}
        dtypes = self._dtypes
        for name, value in fields.items():
            array = value if type(value) is np.ndarray else np.asarray(value)
            if name in dtypes:
                wanted = dtypes[name]
                if wanted is None:
                    if array.dtype.kind == "O":
                        array = array.astype(str)
                elif array.dtype != wanted and np.can_cast(array.dtype, wanted, "same_kind"):
                    array = array.astype(wanted)
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
    def chunks(size: int, wanted: Optional[Collection[str]]) -> Iterator[Batch]:
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


def _npy_header(file: Path) -> Tuple[Tuple[int, ...], np.dtype, int]:
    """``(shape, dtype, data offset)`` of a C-ordered .npy file holding no Python objects."""
    try:
        with open(file, "rb") as stream:
            version = np.lib.format.read_magic(stream)
            read_header = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
            if version not in read_header:
                raise DatasetError(f"{file}: .npy format version {version} is not supported; save it with np.save")
            shape, fortran_order, dtype = read_header[version](stream)
            offset = stream.tell()
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{file}: cannot read as .npy: {exc}") from None
    if fortran_order or dtype.hasobject or not shape:
        raise DatasetError(
            f"{file}: expected a C-ordered array of numbers or fixed-width strings with an example axis; "
            f"got shape {list(shape)}, dtype {dtype}{', Fortran order' if fortran_order else ''}"
        )
    return shape, dtype, offset


def _npy_dataset(files: List[Path], fields: _Fields, description: str) -> Dataset:
    if not fields.batched:
        raise DatasetError(f"{description}: .npy files hold examples along axis 0, but the problem has no batch axis")
    headers = {file.stem: (file, *_npy_header(file)) for file in files}
    lengths = {name: shape[0] for name, (_, shape, _, _) in headers.items()}
    if len(set(lengths.values())) > 1:
        raise DatasetError(f"{description}: fields hold different numbers of examples: {lengths}")
    total = next(iter(lengths.values()), 0)

    def chunks(size: int, wanted: Optional[Collection[str]]) -> Iterator[Batch]:
        # Read chunk by chunk (a syscall per field per chunk, not per batch) into fresh arrays: memory
        # stays flat (no mapping whose pages pile up in the process) and batches are writable views.
        with contextlib.ExitStack() as stack:
            streams = {}
            for name, (file, shape, dtype, offset) in headers.items():
                if wanted is not None and name not in wanted:
                    continue
                stream = stack.enter_context(open(file, "rb"))
                stream.seek(offset)
                streams[name] = (stream, shape[1:], dtype)
            row_bytes = sum(dtype.itemsize * int(np.prod(shape)) for _, shape, dtype in streams.values())
            step = _chunk_rows(size, row_bytes)
            for start in range(0, total, step):
                rows = min(step, total - start)
                batch = {}
                for name, (stream, example_shape, dtype) in streams.items():
                    array = np.empty((rows, *example_shape), dtype)
                    if stream.readinto(array.data.cast("B")) != array.nbytes:
                        raise DatasetError(f"{description}: {name}.npy ends before its {total} examples")
                    batch[name] = array
                yield fields.cast(batch, description)

    return Dataset(chunks, total, description, field_names=list(headers))


def _arrays_dataset(arrays: Mapping[str, np.ndarray], fields: _Fields, description: str) -> Dataset:
    lengths = {name: len(array) for name, array in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise DatasetError(f"{description}: fields hold different numbers of examples: {lengths}")
    total = next(iter(lengths.values()), 0)

    def chunks(size: int, wanted: Optional[Collection[str]]) -> Iterator[Batch]:
        # Slices of a memory map stay lazy: a batch is read from disk when the model reads it.
        for start in range(0, total, size):
            yield fields.cast({k: np.asarray(v[start : start + size]) for k, v in arrays.items()}, description)

    return Dataset(chunks, total, description, field_names=list(arrays))


def _examples_dataset(examples: Iterable[Mapping[str, Any]], fields: _Fields, description: str) -> Dataset:
    total = len(examples) if hasattr(examples, "__len__") else None  # type: ignore[arg-type]

    def chunks(group: int, wanted: Optional[Collection[str]]) -> Iterator[Batch]:
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


def _arrow_dataset(files: List[Path], fields: _Fields, description: str) -> Dataset:
    """Parquet or Arrow IPC files, read one record batch at a time (no read-ahead: memory stays flat)."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise DatasetError(
            f"{description}: reading Parquet/Arrow needs pyarrow: pip install 'neuropod-python[tools]'"
        ) from exc
    if not fields.batched:
        raise DatasetError(f"{description}: a table holds one example per row, but the problem has no batch axis")

    def open_table(file: Path) -> Any:
        try:
            if file.suffix in _ARROW_SUFFIXES:
                return pa.ipc.open_file(pa.memory_map(str(file)))
            return pq.ParquetFile(str(file))
        except (pa.ArrowException, OSError) as exc:
            raise DatasetError(f"{file}: cannot read as {file.suffix.lstrip('.')}: {exc}") from None

    def rows_of(table: Any) -> int:
        if isinstance(table, pq.ParquetFile):
            return int(table.metadata.num_rows)
        return sum(table.get_batch(i).num_rows for i in range(table.num_record_batches))

    total = sum(rows_of(open_table(file)) for file in files)

    def record_batches(table: Any, rows: int, columns: Optional[List[str]]) -> Iterator[Any]:
        if isinstance(table, pq.ParquetFile):
            # One row group at a time: memory is bounded by the file's row groups, and each is read in
            # one go (iter_batches without pre-buffering is several times slower; with it, it reads ahead).
            for group in range(table.num_row_groups):
                yield from table.read_row_group(group, columns=columns).to_batches(max_chunksize=rows)
        else:
            for i in range(table.num_record_batches):
                batch = table.get_batch(i)
                yield batch if columns is None else batch.select(columns)

    first = open_table(files[0]) if files else None
    names = list((first.schema_arrow if isinstance(first, pq.ParquetFile) else first.schema).names) if first else []

    def chunks(size: int, wanted: Optional[Collection[str]]) -> Iterator[Batch]:
        for file in files:
            table = open_table(file)
            schema = table.schema_arrow if isinstance(table, pq.ParquetFile) else table.schema
            # Converting a record batch to numpy costs tens of µs whatever its size: read chunks of about
            # _CHUNK_BYTES (guessed from the fixed-width columns) and let the batcher slice them.
            columns = None if wanted is None else [name for name in schema.names if name in wanted]
            row_bytes = sum(_fixed_width(column.type) for column in schema if columns is None or column.name in columns)
            for record_batch in record_batches(table, _chunk_rows(size, row_bytes), columns):
                arrays = {
                    name: _arrow_to_numpy(record_batch.column(i), name, str(file))
                    for i, name in enumerate(record_batch.schema.names)
                }
                yield fields.cast(arrays, str(file))

    return Dataset(chunks, total, description, field_names=names)


def _fixed_width(kind: Any) -> int:
    """Bytes per row of an Arrow type, counting lists and strings as 64."""
    import pyarrow as pa

    if isinstance(kind, pa.FixedShapeTensorType):
        return _fixed_width(kind.storage_type)
    if pa.types.is_fixed_size_list(kind):
        return kind.list_size * _fixed_width(kind.value_type)
    try:
        return max(1, kind.bit_width // 8)
    except ValueError:  # variable width: lists, strings
        return 64


def _is_ray_dataset(source: Any) -> bool:
    # Told by its module: Ray is imported only by callers who hand over a Ray Dataset.
    return type(source).__module__.startswith("ray.data") and hasattr(source, "iter_batches")


def _ray_dataset(dataset: Any, fields: _Fields) -> Dataset:
    from ..integrations.ray.data import iter_dataset_batches

    def chunks(size: int, wanted: Optional[Collection[str]]) -> Iterator[Batch]:
        for batch in iter_dataset_batches(dataset, batch_size=size):
            if fields.batched:
                yield fields.cast(batch, "a Ray Dataset")
                continue
            for row in range(len(next(iter(batch.values()), ()))):  # one example per call
                yield fields.cast({name: column[row] for name, column in batch.items()}, "a Ray Dataset")

    # The row count stays unknown: counting can run the dataset's whole pipeline.
    return Dataset(chunks, None, "a Ray Dataset", fields.batched)


def open_dataset(source: Any, problem: Optional[Problem] = None) -> Dataset:
    """A :class:`Dataset` over ``source``.

    Args:
        source: a path (a directory of ``.npz`` or ``.npy`` files, a ``.npz``
            file, a Parquet file or directory, an ``.arrow``/``.feather``
            file), a Dataset, a Ray Dataset, an iterable of example dicts, or a dict of arrays.
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
    if _is_ray_dataset(source):  # before Iterable: a Ray Dataset iterates row by row
        return _ray_dataset(source, fields)
    if isinstance(source, Mapping):
        if not fields.batched:
            return Dataset(lambda size, wanted: iter([fields.cast(source, "dict")]), 1, "a dict of arrays", False)
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
            return _arrow_dataset([path], fields, str(path))
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
    return _arrow_dataset(parquet, fields, f"{path} ({len(parquet)} Parquet files)")
