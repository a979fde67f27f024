"""The original's ``neuropod.backends.neuropod_executor``: its public tensor check.

The original's executor classes are not rebuilt here (``load_neuropod``
returns this project's models); the module-level function its users and
tests called is.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from ..spec import SpecValidator, as_specs

__all__ = ["validate_tensors_against_specs"]


def validate_tensors_against_specs(tensors: Mapping[str, Any], tensor_specs: Iterable[Any]) -> None:
    """Check numpy arrays against tensor specs, as a model's inputs are checked.

    As in the original, every tensor is optional, a name not in the specs is
    refused, and every use of a symbol must have the same size.

    Args:
        tensors: tensor name -> numpy array.
        tensor_specs: the specs (``{"name", "dtype", "shape"}`` dicts).

    Raises:
        SpecError: a spec itself is invalid (a ``ValueError``, as in the original).
        InputValidationError: a tensor breaks its spec, naming it, what was
            expected and what came (a ``ValueError``, as in the original).
    """
    SpecValidator(as_specs(tensor_specs, "tensor_specs"), "input").validate(tensors)
