"""``create_placeholder_neuropod``: a model made from a problem definition alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Iterable, Mapping, Optional

from ...errors import SpecError
from ...packagers._pipeline import PathLike, Requirements, create_neuropod, shared_options
from .backend import DEFAULT_FREE_DIM_SIZE, MAX_FREE_DIM_SIZE, MAX_SEED

__all__ = ["create_placeholder_neuropod"]


def create_placeholder_neuropod(
    neuropod_path: PathLike,
    model_name: str,
    input_spec: Any,
    output_spec: Any,
    seed: int = 0,
    free_dim_size: int = DEFAULT_FREE_DIM_SIZE,
    inputs_optional: bool = False,
    *,
    problem: Any = None,
    test_input_data: Optional[Mapping[str, Any]] = None,
    test_expected_out: Optional[Mapping[str, Any]] = None,
    persist_test_data: bool = True,
    package_as_zip: bool = True,
    custom_ops: Iterable[PathLike] = (),
    platform_version_semver: str = "*",
    input_tensor_device: Optional[Mapping[str, str]] = None,
    default_input_tensor_device: str = "CPU",
    requirements: Requirements = None,
    zip_compression: Optional[int] = None,
    keep_failed: bool = False,
    self_test_options: Optional[Dict[str, Any]] = None,
    neuropod_load_args: Optional[Mapping[str, Any]] = None,
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
        problem: instead of both specs: a ProblemDefinition, its dict form or a problem file.
        test_input_data: inputs of the self-test that runs the finished package (stored with
            ``persist_test_data``).
        test_expected_out: outputs the self-test must produce (None: it only runs the model).
        persist_test_data: store the test data in the package (``test_data.npz``) for ``neuropod test``.
        package_as_zip: write a zip (default) or a directory.
        custom_ops: custom-op shared libraries, copied into ``0/ops`` and loaded before the model.
        platform_version_semver: the framework versions the package runs on (``"*"``, ``">=2.0"``).
        input_tensor_device: input name -> ``"CPU"`` or ``"GPU"`` where it differs from the default.
        default_input_tensor_device: where inputs go unless ``input_tensor_device`` says otherwise.
        requirements: pinned ``name==version`` lines (a string or a list), stored in ``0/requirements.lock``.
        zip_compression: None: each file deflated unless it barely compresses (weights are stored); or
            ``zipfile.ZIP_DEFLATED`` / ``zipfile.ZIP_STORED`` for every file.
        keep_failed: leave a package whose self-test failed at ``neuropod_path`` for inspection.
        self_test_options: ``load_neuropod`` options of the self-test (``use_ope=True``, ...).
        neuropod_load_args: the original's name for ``self_test_options`` (the two are merged).

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
        **shared_options(locals()),
    )
