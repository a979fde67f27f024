"""The one packaging pipeline every packager shares.

A packager only writes its framework's artifact into ``0/`` (and returns the
backend settings for ``0/config.json``); this module writes the config, test
data, custom ops and manifest, zips the tree, and runs the self-test on the
finished artifact.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Union

from ..errors import PackageError
from ..package import layout
from ..package.archive import write_zip
from ..package.config import PackageConfig, write_json
from ..package.manifest import write_manifest
from ..package.testdata import write_test_data
from ..selftest import run_self_test

__all__ = ["create_neuropod", "normalize_requirements"]

PathLike = Union[str, "os.PathLike[str]"]
#: Writes the framework artifact under the given ``0/`` dir; returns ``0/config.json`` settings or None.
WriteModel = Callable[[Path], Optional[Mapping[str, Any]]]


def normalize_requirements(requirements: Union[None, str, Iterable[str]]) -> List[str]:
    """Pinned ``name==version`` lines from a string or a list; anything unpinned is refused."""
    if requirements is None:
        return []
    lines = requirements.splitlines() if isinstance(requirements, str) else list(requirements)
    pinned = []
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        if not sep or not name.strip() or not version.strip() or any(c in version for c in "<>=!~,; "):
            raise PackageError(f"requirements: {line!r} is not pinned; write it as 'name==version'")
        pinned.append(f"{name.strip()}=={version.strip()}")
    return sorted(pinned, key=str.lower)


def create_neuropod(
    *,
    neuropod_path: PathLike,
    model_name: str,
    platform: str,
    input_spec: Any,
    output_spec: Any,
    write_model: WriteModel,
    test_input_data: Optional[Mapping[str, Any]] = None,
    test_expected_out: Optional[Mapping[str, Any]] = None,
    persist_test_data: bool = True,
    package_as_zip: bool = True,
    custom_ops: Iterable[PathLike] = (),
    platform_version_semver: str = "*",
    input_tensor_device: Optional[Mapping[str, str]] = None,
    default_input_tensor_device: str = "GPU",
    requirements: Union[None, str, Iterable[str]] = None,
    self_test_options: Optional[Dict[str, Any]] = None,
) -> Path:
    """Write a package and self-test it; return its path.

    Raises:
        PackageError: the target exists, or an input file is missing.
        SpecError: a spec or device setting is invalid.
        TestMismatchError: the self-test's outputs differ from ``test_expected_out``.
    """
    target = Path(neuropod_path)
    if target.exists():
        raise PackageError(f"{target}: already exists; refusing to overwrite it")
    op_paths = [Path(p) for p in custom_ops]
    for op in op_paths:
        if not op.is_file():
            raise PackageError(f"custom op {str(op)!r}: no such file")
    config = PackageConfig.build(
        model_name,
        platform,
        input_spec,
        output_spec,
        platform_version_semver=platform_version_semver,
        input_tensor_device=input_tensor_device,
        default_input_tensor_device=default_input_tensor_device,
        custom_ops=[op.name for op in op_paths],
    )
    pinned = normalize_requirements(requirements)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        model_dir = staging / layout.MODEL_DIR
        (staging / layout.DATA_DIR).mkdir(parents=True)
        backend_settings = write_model(model_dir)
        if backend_settings is not None:
            write_json(staging / layout.BACKEND_CONFIG, dict(backend_settings))
        if op_paths:
            (staging / layout.OPS_DIR).mkdir(parents=True)
            for op in op_paths:
                shutil.copy2(op, staging / layout.OPS_DIR / op.name)
        if pinned:
            (staging / layout.REQUIREMENTS).write_text("\n".join(pinned) + "\n", encoding="utf-8")
        config.write(staging)
        if persist_test_data and test_input_data is not None:
            write_test_data(staging, test_input_data, test_expected_out)
        write_manifest(staging)
        if package_as_zip:
            write_zip(staging, target)
        else:
            os.rename(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if test_input_data is not None:
        run_self_test(target, test_input_data, test_expected_out, **(self_test_options or {}))
    return target
