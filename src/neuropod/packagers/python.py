"""``create_python_neuropod`` / ``create_pytorch_neuropod``: packaged Python code."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Dict, Iterable, Mapping, Optional, Sequence, Union

from ..errors import PackageError
from ._pipeline import PathLike, create_neuropod

__all__ = ["create_python_neuropod", "create_pytorch_neuropod"]


def _check_entries(data_paths: Sequence[Mapping[str, Any]], code_path_spec: Sequence[Mapping[str, Any]]) -> None:
    for entry in data_paths:
        if "path" not in entry or "packaged_name" not in entry:
            raise PackageError(f"data_paths: each entry needs 'path' and 'packaged_name', got {dict(entry)!r}")
        if not Path(entry["path"]).exists():
            raise PackageError(f"data_paths: {entry['path']!r} does not exist")
        if Path(entry["packaged_name"]).is_absolute() or ".." in Path(entry["packaged_name"]).parts:
            raise PackageError(f"data_paths: packaged_name {entry['packaged_name']!r} must be a relative name")
    for spec in code_path_spec:
        if "python_root" not in spec or "dirs_to_package" not in spec:
            raise PackageError(
                f"code_path_spec: each entry needs 'python_root' and 'dirs_to_package', got {dict(spec)!r}"
            )
        for directory in spec["dirs_to_package"]:
            source = Path(spec["python_root"]) / directory
            if not source.is_dir():
                raise PackageError(f"code_path_spec: {str(source)!r} is not a directory")


def _copy(source: Path, target: Path) -> None:
    if source.is_dir():
        shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)


def create_python_neuropod(
    neuropod_path: PathLike,
    model_name: str,
    data_paths: Sequence[Mapping[str, Any]],
    code_path_spec: Sequence[Mapping[str, Any]],
    entrypoint_package: str,
    entrypoint: str,
    requirements: Union[None, str, Iterable[str]] = None,
    platform: str = "python",
    **options: Any,
) -> Path:
    """Package Python code and its data.

    Args:
        data_paths: ``[{"path": ..., "packaged_name": ...}]``: files or dirs
            copied into ``0/data``.
        code_path_spec: ``[{"python_root": ..., "dirs_to_package": [...]}]``:
            code dirs copied into ``0/code`` (imported relative to it).
        entrypoint_package: the module holding the entrypoint (``pkg.main``).
        entrypoint: a function called with the absolute path of ``0/data``
            that returns a callable taking keyword numpy arrays and returning a
            dict of arrays.
        requirements: pinned ``name==version`` lines (a string or a list),
            stored in ``0/requirements.lock`` and checked at load.
        **options: the shared packaging options (see
            :func:`~neuropod.packagers.create_torchscript_neuropod`).
    """
    _check_entries(data_paths, code_path_spec)

    def write_model(model_dir: Path) -> Dict[str, str]:
        for entry in data_paths:
            _copy(Path(entry["path"]), model_dir / "data" / entry["packaged_name"])
        code_dir = model_dir / "code"
        code_dir.mkdir(parents=True, exist_ok=True)
        for spec in code_path_spec:
            for directory in spec["dirs_to_package"]:
                _copy(Path(spec["python_root"]) / directory, code_dir / directory)
        return {"entrypoint_package": entrypoint_package, "entrypoint": entrypoint}

    return create_neuropod(
        neuropod_path=neuropod_path,
        model_name=model_name,
        platform=platform,
        write_model=write_model,
        requirements=requirements,
        **options,
    )


def create_pytorch_neuropod(
    neuropod_path: PathLike,
    model_name: str,
    data_paths: Sequence[Mapping[str, Any]],
    code_path_spec: Sequence[Mapping[str, Any]],
    entrypoint_package: str,
    entrypoint: str,
    requirements: Optional[Union[str, Iterable[str]]] = None,
    **options: Any,
) -> Path:
    """Package eager PyTorch code: :func:`create_python_neuropod` whose model may return torch tensors.

    Like the original, the package's platform is ``python``.
    """
    return create_python_neuropod(
        neuropod_path,
        model_name,
        data_paths,
        code_path_spec,
        entrypoint_package,
        entrypoint,
        requirements=requirements,
        **options,
    )
