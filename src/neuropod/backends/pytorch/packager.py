"""``create_pytorch_neuropod``: eager PyTorch code, packaged as Python code (platform ``python``)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Optional, Sequence, Union

from ...packagers._pipeline import PathLike
from ...packagers._shared import PackagingArgsAfterRequirements, packager
from ..python.packager import create_python_neuropod

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["create_pytorch_neuropod"]


@packager()
def create_pytorch_neuropod(
    neuropod_path: PathLike,
    model_name: str,
    data_paths: Sequence[Mapping[str, Any]],
    code_path_spec: Sequence[Mapping[str, Any]],
    entrypoint_package: str,
    entrypoint: str,
    requirements: Optional[Union[str, Iterable[str]]] = None,
    **shared: Unpack[PackagingArgsAfterRequirements],
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
        requirements: pinned ``name==version`` lines (a string or a list), stored in ``0/requirements.lock``.
        **shared: the keywords every packager takes (:class:`~neuropod.packagers._shared.PackagingArgs`).

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
        requirements,
        **shared,
    )
