"""``create_pytorch_neuropod``: eager PyTorch code, packaged as Python code (platform ``python``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Iterable, Mapping, Optional, Sequence, Union

from ...packagers._pipeline import PathLike, Specs, shared_options
from ..python.packager import create_python_neuropod

__all__ = ["create_pytorch_neuropod"]


def create_pytorch_neuropod(
    neuropod_path: PathLike,
    model_name: str,
    data_paths: Sequence[Mapping[str, Any]],
    code_path_spec: Sequence[Mapping[str, Any]],
    entrypoint_package: str,
    entrypoint: str,
    requirements: Optional[Union[str, Iterable[str]]] = None,
    *,
    input_spec: Specs = None,
    output_spec: Specs = None,
    problem: Any = None,
    test_input_data: Optional[Mapping[str, Any]] = None,
    test_expected_out: Optional[Mapping[str, Any]] = None,
    persist_test_data: bool = True,
    package_as_zip: bool = True,
    custom_ops: Iterable[PathLike] = (),
    platform_version_semver: str = "*",
    input_tensor_device: Optional[Mapping[str, str]] = None,
    default_input_tensor_device: str = "GPU",
    zip_compression: Optional[int] = None,
    keep_failed: bool = False,
    self_test_options: Optional[Dict[str, Any]] = None,
    neuropod_load_args: Optional[Mapping[str, Any]] = None,
) -> Path:
    """Package eager PyTorch code: :func:`create_python_neuropod` whose model may return torch tensors.

    Like the original, the package's platform is ``python``.

    Args:
        neuropod_path: where to write the package.
        model_name: the model's name.
        data_paths: as :func:`create_python_neuropod`.
        code_path_spec: as :func:`create_python_neuropod`.
        entrypoint_package: as :func:`create_python_neuropod`.
        entrypoint: as :func:`create_python_neuropod`.
        input_spec: the inputs: a list of ``{"name", "dtype", "shape"}`` dicts (or TensorSpecs).
        output_spec: the outputs, in the same form.
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
    return create_python_neuropod(
        neuropod_path,
        model_name,
        data_paths,
        code_path_spec,
        entrypoint_package,
        entrypoint,
        **shared_options(locals()),
    )
