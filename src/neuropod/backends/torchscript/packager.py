"""``create_torchscript_neuropod``: a TorchScript module in ``0/data/model.pt``."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional

from ...errors import PackageError
from ...package import layout
from ...packagers._failures import framework_failure, trace_hint
from ...packagers._pipeline import PathLike, Specs, create_neuropod
from ...packagers._shared import PackagingArgs, packager
from ...progress import copy_file
from ...spec import as_specs

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["create_torchscript_neuropod"]


@packager()
def create_torchscript_neuropod(
    neuropod_path: PathLike,
    model_name: str,
    module: Any = None,
    module_path: Optional[PathLike] = None,
    **shared: Unpack[PackagingArgs],
) -> Path:
    """Package a TorchScript model.

    Args:
        neuropod_path: where to write the package (a zip unless
            ``package_as_zip=False``).
        model_name: the model's name.
        module: a ``torch.jit.ScriptModule`` (a plain ``nn.Module`` is
            scripted with ``torch.jit.script``).
        module_path: or the path of a saved TorchScript file.
        **shared: the keywords every packager takes (:class:`~neuropod.packagers._shared.PackagingArgs`).

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
                module
                if isinstance(module, torch.jit.ScriptModule)
                else _script(module, shared["input_spec"], shared["test_input_data"])
            )
            torch.jit.save(scripted, str(target))

    return create_neuropod(
        neuropod_path=neuropod_path,
        model_name=model_name,
        platform="torchscript",
        write_model=write_model,
        **shared,
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
