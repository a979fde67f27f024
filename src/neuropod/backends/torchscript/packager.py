"""``create_torchscript_neuropod``: a TorchScript module in ``0/data/model.pt``."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Dict, Iterable, Mapping, Optional

from ...errors import PackageError
from ...package import layout
from ...packagers._failures import framework_failure, trace_hint
from ...packagers._pipeline import PathLike, Requirements, Specs, create_neuropod, shared_options
from ...progress import copy_file
from ...spec import as_specs

__all__ = ["create_torchscript_neuropod"]


def create_torchscript_neuropod(
    neuropod_path: PathLike,
    model_name: str,
    module: Any = None,
    module_path: Optional[PathLike] = None,
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
    requirements: Requirements = None,
    zip_compression: Optional[int] = None,
    keep_failed: bool = False,
    self_test_options: Optional[Dict[str, Any]] = None,
    neuropod_load_args: Optional[Mapping[str, Any]] = None,
) -> Path:
    """Package a TorchScript model.

    Args:
        neuropod_path: where to write the package (a zip unless
            ``package_as_zip=False``).
        model_name: the model's name.
        module: a ``torch.jit.ScriptModule`` (a plain ``nn.Module`` is
            scripted with ``torch.jit.script``).
        module_path: or the path of a saved TorchScript file.
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
    if (module is None) == (module_path is None):
        raise PackageError("create_torchscript_neuropod: pass exactly one of module= or module_path=")
    if module_path is not None and not Path(module_path).is_file():
        raise PackageError(f"module_path {str(module_path)!r}: no such file")

    def write_model(root: Path) -> None:
        target = root / layout.DATA_DIR / layout.TORCHSCRIPT_MODEL
        if module_path is not None:
            copy_file(module_path, target)
            return
        import torch

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is deprecated, but it is this format
            scripted = (
                module if isinstance(module, torch.jit.ScriptModule) else _script(module, input_spec, test_input_data)
            )
            torch.jit.save(scripted, str(target))

    return create_neuropod(
        neuropod_path=neuropod_path,
        model_name=model_name,
        platform="torchscript",
        write_model=write_model,
        **shared_options(locals()),
    )


def _script(module: Any, input_spec: Specs, test_input_data: Optional[Mapping[str, Any]]) -> Any:
    """``torch.jit.script(module)``; a failure says to trace instead, with the test inputs."""
    import torch

    try:
        return torch.jit.script(module)
    except Exception as exc:  # OSError (no source), NotSupportedError, RuntimeError (unsupported Python)
        names = (
            [spec.name for spec in as_specs(input_spec, "input_spec")] if input_spec else list(test_input_data or ())
        )
        raise framework_failure(
            f"create_torchscript_neuropod: torch.jit.script could not compile {type(module).__name__}",
            exc,
            trace_hint(names),
        ) from exc
