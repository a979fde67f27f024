"""``create_placeholder_neuropod``: a model made from a problem definition alone."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict

from ...errors import SpecError
from ...packagers._pipeline import PathLike, create_neuropod
from ...packagers._shared import PackagingArgsAfterSpecs, packager
from .backend import DEFAULT_FREE_DIM_SIZE, MAX_FREE_DIM_SIZE, MAX_SEED

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["create_placeholder_neuropod"]


@packager(default_input_tensor_device="CPU")
def create_placeholder_neuropod(
    neuropod_path: PathLike,
    model_name: str,
    input_spec: Any,
    output_spec: Any,
    seed: int = 0,
    free_dim_size: int = DEFAULT_FREE_DIM_SIZE,
    inputs_optional: bool = False,
    **shared: Unpack[PackagingArgsAfterSpecs],
) -> Path:
    """Write a package that returns random outputs of the declared dtypes and shapes.

    An output symbol takes the size it has in the inputs; ``None`` and symbols
    no input binds get ``free_dim_size``. The same seed and input shapes give
    the same outputs. It loads and runs like any other package (platform
    ``placeholder``), with no framework installed. Like the model it stands
    in for, it needs every input, unless ``inputs_optional=True``.

    Args:
        neuropod_path: where to write the package.
        model_name: the model's name.
        input_spec: the inputs: a list of ``{"name", "dtype", "shape"}`` dicts (or TensorSpecs).
        output_spec: the outputs, in the same form.
        seed: the random generator's seed (0 to 2**64 - 1).
        free_dim_size: the size of ``None`` and unbound symbol dimensions (at most 2**20).
        inputs_optional: run without inputs (the original's ``randomify_neuropod`` stand-ins did).
        **shared: the keywords every packager takes (:class:`~neuropod.packagers._shared.PackagingArgs`).

    Returns:
        The package path.
    """
    # The bounds the backend checks at load, so that what is written always loads.
    for name, value, largest in (("seed", seed, MAX_SEED), ("free_dim_size", free_dim_size, MAX_FREE_DIM_SIZE)):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= largest:
            raise SpecError(f"create_placeholder_neuropod: {name}: expected an int from 0 to {largest}, got {value!r}")

    def write_model(root: Path) -> Dict[str, Any]:
        settings: Dict[str, Any] = {"seed": seed, "free_dim_size": free_dim_size}
        if inputs_optional:
            settings["inputs_optional"] = True
        return settings

    return create_neuropod(
        neuropod_path=neuropod_path,
        model_name=model_name,
        platform="placeholder",
        write_model=write_model,
        input_spec=input_spec,
        output_spec=output_spec,
        **shared,
    )
