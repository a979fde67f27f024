"""Ray Data: run a neuropod over a dataset, and read a dataset as numpy batches.

:class:`NeuropodPredictor` is a callable class for ``Dataset.map_batches``:
each Ray Data actor loads the package once and runs every batch it is given
through it. Columns named like the model's inputs are its inputs (the other
inputs are optional, as with ``infer``); the outputs become columns::

    predictions = predict_dataset(ds, "addition.zip", batch_size=256, concurrency=2)

:func:`iter_dataset_batches` turns a dataset into the plain iterable of
``{column: numpy array}`` batches that the evaluation and comparison tools read.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Iterator, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from ...errors import InputValidationError, OutputValidationError
from ...spec import TensorSpec
from ...urls import model_location
from . import _load_here

__all__ = ["NeuropodPredictor", "predict_dataset", "iter_dataset_batches", "column_array"]

TensorDict = Dict[str, np.ndarray]


def column_array(name: str, column: Any, spec: Optional[TensorSpec] = None, cast: bool = True) -> np.ndarray:
    """A Ray Data column as the numpy array a model takes.

    Ray hands string columns and tensor columns of varying shapes over as
    object arrays: strings become a unicode array, equal-shaped tensors are
    stacked into one array. With ``cast`` and a numeric ``spec``, numbers are
    converted to the spec's dtype when numpy calls that a same-kind cast
    (float64 -> float32, int64 -> int32; never float -> int).

    Raises:
        InputValidationError: tensors of different shapes in one column, or
            values that cannot become the spec's dtype.
    """
    array = np.asarray(column)
    if array.dtype == object:
        items = array.tolist()
        if all(isinstance(item, (str, bytes)) for item in items):
            array = np.array([i.decode("utf-8") if isinstance(i, bytes) else i for i in items], dtype=str)
        else:
            try:
                array = np.stack([np.asarray(item) for item in items]) if items else array
            except ValueError as exc:
                raise InputValidationError(
                    f"column {name!r}: its rows are tensors of different shapes, which one batch cannot hold "
                    f"({exc}); use batch_size=1 or pad them"
                ) from None
    if cast and spec is not None and spec.dtype not in ("string",):
        target = spec.numpy_dtype
        if array.dtype != target and np.can_cast(array.dtype, target, casting="same_kind"):
            array = array.astype(target)
    return array


class NeuropodPredictor:
    """A callable class for ``Dataset.map_batches``: runs one package over each batch.

    Pass the class itself to ``map_batches`` with ``fn_constructor_args=(model,)``
    (or use :func:`predict_dataset`); each actor loads the model once.

    Args:
        model: a package path (visible on every node) or a model URL.
        load_options: keyword arguments for :func:`~neuropod.load_neuropod`
            (``use_ope=True`` runs the model in the actor's worker process).
            When the actor has a GPU (``num_gpus=1``) the model runs on it
            unless ``visible_gpu`` says otherwise.
        keep_columns: return the batch's columns alongside the outputs (an
            output replaces a column of the same name); False returns the
            outputs only.
        cast: convert numeric columns to the input spec's dtype (same-kind
            casts only), since Ray Data often stores float32 data as float64.
    """

    def __init__(
        self,
        model: Union[str, os.PathLike[str]],
        load_options: Optional[Mapping[str, Any]] = None,
        keep_columns: bool = True,
        cast: bool = True,
    ) -> None:
        self._model = _load_here(os.fspath(model), load_options)
        self._inputs = {spec.name: spec for spec in self._model.problem.inputs}
        self._keep_columns = keep_columns
        self._cast = cast

    def __call__(self, batch: Mapping[str, Any]) -> TensorDict:
        inputs = {
            name: column_array(name, column, self._inputs[name], self._cast)
            for name, column in batch.items()
            if name in self._inputs
        }
        if not inputs and self._inputs:
            raise InputValidationError(
                f"model {self._model.name!r}: no column of the batch is one of its inputs; expected any of "
                f"{', '.join(repr(n) for n in self._inputs)}, got columns {', '.join(repr(c) for c in batch)}"
            )
        outputs = self._model.infer(inputs)
        rows = _rows(batch)
        for name, array in outputs.items():
            if rows is not None and (array.ndim == 0 or array.shape[0] != rows):
                raise OutputValidationError(
                    f"output {name!r}: a dataset column needs one row per input row; the batch has {rows} rows, "
                    f"the output has shape {list(array.shape)}"
                )
        if not self._keep_columns:
            return outputs
        return {**{name: np.asarray(column) for name, column in batch.items()}, **outputs}

    def close(self) -> None:
        self._model.close()

    def __del__(self) -> None:  # actors end without telling their callable; free the worker then
        model = getattr(self, "_model", None)
        if model is not None:
            model.close()


def _rows(batch: Mapping[str, Any]) -> Optional[int]:
    for column in batch.values():
        return len(column)
    return None


def predict_dataset(
    dataset: Any,
    model: Union[str, os.PathLike[str]],
    *,
    batch_size: Optional[int] = 256,
    concurrency: Union[int, Tuple[int, int]] = 1,
    num_gpus: Optional[float] = None,
    num_cpus: Optional[float] = None,
    load_options: Optional[Mapping[str, Any]] = None,
    keep_columns: bool = True,
    cast: bool = True,
    **map_batches_options: Any,
) -> Any:
    """``dataset`` with the outputs of ``model`` added (lazy, like every Ray Data transform).

    Args:
        dataset: a ``ray.data.Dataset``.
        model: a package path (visible on every node) or a model URL.
        batch_size: rows per model call.
        concurrency: actors (each with its own copy of the model): a count, or
            ``(min, max)`` for an autoscaling pool.
        num_gpus: GPUs per actor (the model runs on the actor's GPU).
        num_cpus: CPUs per actor.
        load_options, keep_columns, cast: as for :class:`NeuropodPredictor`.
        **map_batches_options: passed through to ``Dataset.map_batches``.
    """
    from ray.data import ActorPoolStrategy

    pool = (
        ActorPoolStrategy(min_size=concurrency[0], max_size=concurrency[1])
        if isinstance(concurrency, tuple)
        else ActorPoolStrategy(size=concurrency)
    )
    return dataset.map_batches(
        NeuropodPredictor,
        fn_constructor_args=(model_location(model),),
        fn_constructor_kwargs={"load_options": dict(load_options or {}), "keep_columns": keep_columns, "cast": cast},
        batch_size=batch_size,
        batch_format="numpy",
        compute=pool,
        num_gpus=num_gpus,
        num_cpus=num_cpus,
        **map_batches_options,
    )


def iter_dataset_batches(
    dataset: Any, batch_size: Optional[int] = 256, columns: Optional[Sequence[str]] = None
) -> Iterator[TensorDict]:
    """The rows of a Ray Dataset as ``{column: numpy array}`` batches of up to ``batch_size`` rows.

    String columns come as unicode arrays and tensor columns stacked, as the
    model inputs made by :class:`NeuropodPredictor`.

    Args:
        dataset: a ``ray.data.Dataset``.
        batch_size: rows per batch (the last one may be smaller); None for one
            batch per dataset block.
        columns: only these columns (default: all).
    """
    if columns is not None:
        dataset = dataset.select_columns(list(columns))
    for batch in dataset.iter_batches(batch_size=batch_size, batch_format="numpy"):
        yield {name: column_array(name, column, cast=False) for name, column in batch.items()}
