"""``create_placeholder_neuropod``: a model made from a problem definition alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict

from ..backends.placeholder import DEFAULT_FREE_DIM_SIZE
from ..errors import SpecError
from ._pipeline import PathLike, create_neuropod

__all__ = ["create_placeholder_neuropod"]


def create_placeholder_neuropod(
    neuropod_path: PathLike,
    model_name: str,
    input_spec: Any,
    output_spec: Any,
    seed: int = 0,
    free_dim_size: int = DEFAULT_FREE_DIM_SIZE,
    inputs_optional: bool = False,
    **options: Any,
) -> Path:
    """Write a package that returns random outputs of the declared dtypes and shapes.

    An output symbol takes the size it has in the inputs; ``None`` and symbols
    no input binds get ``free_dim_size``. The same seed and input shapes give
    the same outputs. It loads and runs like any other package (platform
    ``placeholder``), with no framework installed. Like the model it stands
    in for, it needs every input, unless ``inputs_optional=True``.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise SpecError(f"seed: expected a non-negative int, got {seed!r}")
    if isinstance(free_dim_size, bool) or not isinstance(free_dim_size, int) or free_dim_size < 0:
        raise SpecError(f"free_dim_size: expected a non-negative int, got {free_dim_size!r}")

    def write_model(root: Path) -> Dict[str, Any]:
        settings: Dict[str, Any] = {"seed": seed, "free_dim_size": free_dim_size}
        if inputs_optional:
            settings["inputs_optional"] = True
        return settings

    options.setdefault("default_input_tensor_device", "CPU")
    return create_neuropod(
        neuropod_path=neuropod_path,
        model_name=model_name,
        platform="placeholder",
        input_spec=input_spec,
        output_spec=output_spec,
        write_model=write_model,
        **options,
    )
