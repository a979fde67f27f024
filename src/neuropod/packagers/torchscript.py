"""``create_torchscript_neuropod``: a TorchScript module in ``0/data/model.pt``."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path
from typing import Any, Optional

from ..errors import PackageError
from ..package import layout
from ._pipeline import PathLike, create_neuropod

__all__ = ["create_torchscript_neuropod"]


def create_torchscript_neuropod(
    neuropod_path: PathLike,
    model_name: str,
    module: Any = None,
    module_path: Optional[PathLike] = None,
    **options: Any,
) -> Path:
    """Package a TorchScript model.

    Args:
        neuropod_path: where to write the package (a zip unless
            ``package_as_zip=False``).
        model_name: the model's name.
        module: a ``torch.jit.ScriptModule`` (a plain ``nn.Module`` is
            scripted with ``torch.jit.script``).
        module_path: or the path of a saved TorchScript file.
        **options: the shared packaging options (``input_spec``,
            ``output_spec``, ``test_input_data``, ``test_expected_out``,
            ``persist_test_data``, ``package_as_zip``, ``custom_ops``,
            ``platform_version_semver``, ``input_tensor_device``,
            ``default_input_tensor_device``, ``zip_compression``,
            ``keep_failed``; see :func:`neuropod.packagers._pipeline.create_neuropod`).

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
            shutil.copyfile(module_path, target)
            return
        import torch

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is deprecated, but it is this format
            scripted = module if isinstance(module, torch.jit.ScriptModule) else torch.jit.script(module)
            torch.jit.save(scripted, str(target))

    return create_neuropod(
        neuropod_path=neuropod_path, model_name=model_name, platform="torchscript", write_model=write_model, **options
    )
