"""The original's ``neuropod.utils.dtype_utils``: dtype names and numpy dtypes."""

from __future__ import annotations

from typing import Any, Dict, MutableMapping

import numpy as np

from ..spec import canonical_dtype, numpy_dtype

__all__ = ["get_dtype", "get_dtype_name", "maybe_convert_bindings_types"]


def get_dtype(arg: Any) -> np.dtype:
    """The numpy dtype of a dtype name (``"string"`` is a numpy unicode dtype).

    Raises:
        SpecError: an unknown dtype (a ``ValueError``).
    """
    return numpy_dtype(canonical_dtype(arg))


def get_dtype_name(arg: Any) -> str:
    """The canonical name of a dtype (``"double"`` -> ``"float64"``, a unicode dtype -> ``"string"``).

    Raises:
        SpecError: an unknown dtype (a ``ValueError``).
    """
    return canonical_dtype(arg)


def maybe_convert_bindings_types(items: MutableMapping[str, Any]) -> Dict[str, Any]:
    """The inputs as they are.

    The original turned unicode arrays into bytes for its native bindings;
    ``infer`` here takes unicode and bytes string arrays alike, so nothing
    needs converting.
    """
    return dict(items)
