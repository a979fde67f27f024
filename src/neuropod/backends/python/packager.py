"""``create_python_neuropod``: packaged Python code."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Iterable, Mapping, Sequence, Union

from ...errors import PackageError
from ...package import layout
from ...packagers._pipeline import PathLike, create_neuropod
from ...packagers._shared import PackagingArgsAfterRequirements, packager
from ...progress import copy_file

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["create_python_neuropod"]


def _check_entries(
    neuropod_path: PathLike, data_paths: Sequence[Mapping[str, Any]], code_path_spec: Sequence[Mapping[str, Any]]
) -> None:
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
        python_root = Path(spec["python_root"]).resolve()
        if python_root in Path(neuropod_path).resolve().parents:
            # Packaging python_root would copy the package being written into itself.
            raise PackageError(
                f"neuropod_path {str(neuropod_path)!r} is inside python_root {str(spec['python_root'])!r}; "
                "write the package somewhere else"
            )
        dirs = spec["dirs_to_package"]
        if isinstance(dirs, (str, bytes)):
            raise PackageError(f"code_path_spec: dirs_to_package must be a list of directories, got {dirs!r}")
        for directory in dirs:
            source = Path(spec["python_root"]) / directory
            # Each entry keeps its path under 0/code, so it must stay inside python_root.
            if Path(directory).is_absolute() or python_root not in (source.resolve(), *source.resolve().parents):
                raise PackageError(
                    f"code_path_spec: dirs_to_package entry {directory!r} is outside python_root "
                    f"{str(spec['python_root'])!r}; name directories relative to it"
                )
            if not source.is_dir():
                raise PackageError(f"code_path_spec: {str(source)!r} is not a directory")


def _code_files(code_path_spec: Sequence[Mapping[str, Any]]) -> Dict[str, Path]:
    """Every file and directory to put under ``0/code``: relative path -> source path.

    ``dirs_to_package`` entries are relative to ``python_root`` and keep that
    path inside the package; ``""`` is all of ``python_root``. Entries and
    specs may overlap (``["", "pkg"]``) as long as each packaged path comes
    from one source file.
    """
    entries: Dict[str, Path] = {}
    for spec in code_path_spec:
        python_root = Path(spec["python_root"])
        for directory in spec["dirs_to_package"]:
            base = python_root / directory
            for source in sorted(base.rglob("*")):
                relative = source.relative_to(python_root)
                if "__pycache__" in relative.parts or source.suffix == ".pyc":
                    continue
                name = relative.as_posix()
                known = entries.setdefault(name, source)
                if known != source and known.resolve() != source.resolve() and not (known.is_dir() and source.is_dir()):
                    raise PackageError(
                        f"code_path_spec: 0/code/{name} would come from both {str(known)!r} and {str(source)!r}; "
                        "package each file from one place"
                    )
    return entries


def _write_code(code_dir: Path, entries: Mapping[str, Path]) -> None:
    code_dir.mkdir(parents=True)
    for name, source in entries.items():
        target = code_dir / name
        if source.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    # As the original did: every code directory is a regular package (an empty
    # __init__.py where it has none), so its packages import the same way here.
    for directory in [code_dir, *sorted(p for p in code_dir.rglob("*") if p.is_dir())]:
        init = directory / "__init__.py"
        if not init.exists():
            init.touch()


def _copy(source: Path, target: Path) -> None:
    """Copy a data file or directory, in chunks with progress for large files."""
    if source.is_dir():
        shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"), copy_function=copy_file)
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        copy_file(source, target)


@packager()
def create_python_neuropod(
    neuropod_path: PathLike,
    model_name: str,
    data_paths: Sequence[Mapping[str, Any]],
    code_path_spec: Sequence[Mapping[str, Any]],
    entrypoint_package: str,
    entrypoint: str,
    requirements: Union[None, str, Iterable[str]] = None,
    platform: str = "python",
    **shared: Unpack[PackagingArgsAfterRequirements],
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
        **shared: the keywords every packager takes (:class:`~neuropod.packagers._shared.PackagingArgs`).
    """
    _check_entries(neuropod_path, data_paths, code_path_spec)
    code_entries = _code_files(code_path_spec)

    def write_model(root: Path) -> Dict[str, str]:
        for entry in data_paths:
            _copy(Path(entry["path"]), root / layout.DATA_DIR / entry["packaged_name"])
        _write_code(root / layout.CODE_DIR, code_entries)
        # Sorted keys, as the original wrote this file.
        return {"entrypoint": entrypoint, "entrypoint_package": entrypoint_package}

    return create_neuropod(
        neuropod_path=neuropod_path,
        model_name=model_name,
        platform=platform,
        write_model=write_model,
        requirements=requirements,
        **shared,
    )
