"""Inputs generated from a spec, for ``compare`` and ``bench`` runs that are given no data."""

from __future__ import annotations

from typing import Dict, Mapping, Optional

import numpy as np

from ..spec import ProblemDefinition, numpy_dtype, symbol_bounds

__all__ = ["generate_inputs"]

_WORDS = np.array(["alpha", "héllo", "wörld", "日本語", "", "z", "neuropod"])
#: The size of a ``None`` dimension or a symbol with no size given.
DEFAULT_DIM = 4


def generate_inputs(
    definition: ProblemDefinition,
    batch_size: int,
    rng: np.random.Generator,
    dims: Optional[Mapping[str, int]] = None,
    batch_symbol: Optional[str] = None,
) -> Dict[str, np.ndarray]:
    """Random inputs of the spec's dtypes and shapes.

    The batch symbol (or dimension 0 of every input, when it is free) takes
    ``batch_size``; other symbols take ``dims[symbol]`` or 4, the same size
    everywhere they appear; ``None`` takes 4.
    """
    sizes: Dict[str, int] = dict(dims or {})
    if batch_symbol is not None:
        sizes[batch_symbol] = batch_size
    for symbol, (low, high) in symbol_bounds(definition.inputs).items():
        # A bounded symbol nobody sized takes the default size moved into its bounds.
        sizes.setdefault(symbol, min(max(DEFAULT_DIM, low), DEFAULT_DIM if high is None else high))
    inputs = {}
    for spec in definition.inputs:
        shape = []
        for index, dim in enumerate(spec.shape):
            if isinstance(dim, int):
                shape.append(dim)
            elif isinstance(dim, str):
                shape.append(sizes.setdefault(dim, batch_size if index == 0 else DEFAULT_DIM))
            else:
                shape.append(batch_size if index == 0 else DEFAULT_DIM)
        if spec.dtype == "string":
            inputs[spec.name] = rng.choice(_WORDS, size=shape)
        elif spec.dtype == "bool":
            inputs[spec.name] = rng.random(shape) < 0.5
        elif spec.dtype.startswith(("int", "uint")):
            inputs[spec.name] = rng.integers(0, 10, size=shape).astype(spec.dtype)
        else:
            inputs[spec.name] = rng.standard_normal(shape).astype(numpy_dtype(spec.dtype))
    return inputs
