"""The one packaging pipeline every packager shares.

A packager only writes its framework's artifact under ``0/`` (and returns the
backend settings for ``0/config.json``); this module writes the config, test
data, custom ops and manifest, zips the tree, and runs the self-test on the
finished artifact.

Packaging is atomic: everything is built and self-tested under a temporary
name next to the target and renamed into place only when it passed, so after
any failure the target does not exist (a retry just works) unless the caller
asked to keep the failed artifact (``keep_failed=True``).

Large models are streamed: files are copied, hashed and zipped in chunks
(hashing and zipping in one pass), weights that do not compress are stored,
and the self-test of a zip runs on the tree it was written from (checked to
be what the zip holds), so the zip is never read back or extracted and the
cache gets no copy of it. Each step shows its progress in bytes (see
:mod:`neuropod.progress`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Union

from ..errors import NeuropodError, PackageError
from ..package import layout
from ..package.archive import AUTO_COMPRESSION, check_zip_holds_tree, write_zip
from ..package.config import PackageConfig, write_backend_config
from ..package.manifest import write_manifest
from ..package.testdata import write_test_data
from ..progress import copy_file
from ..selftest import run_self_test
from ..spec import problem_specs
from ..versions import VersionRange, check_platform_version
from ._failures import framework_failure

__all__ = ["create_neuropod", "normalize_requirements"]

PathLike = Union[str, "os.PathLike[str]"]
#: A spec argument: a list of ``{"name", "dtype", "shape"}`` dicts or TensorSpecs (None: the packager infers it).
Specs = Optional[Sequence[Any]]
Requirements = Union[None, str, Iterable[str]]
#: Writes the framework artifact into the package tree rooted at the given dir (``0/data`` exists);
#: returns the ``0/config.json`` settings, in the key order they are written, or None for no such file.
WriteModel = Callable[[Path], Optional[Mapping[str, Any]]]

_ZIP_COMPRESSIONS = {AUTO_COMPRESSION: "None", zipfile.ZIP_STORED: "ZIP_STORED", zipfile.ZIP_DEFLATED: "ZIP_DEFLATED"}


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
    input_spec: Any = None,
    output_spec: Any = None,
    write_model: WriteModel,
    problem: Any = None,
    test_input_data: Optional[Mapping[str, Any]] = None,
    test_expected_out: Optional[Mapping[str, Any]] = None,
    persist_test_data: bool = True,
    package_as_zip: bool = True,
    custom_ops: Iterable[PathLike] = (),
    platform_version_semver: str = "*",
    input_tensor_device: Optional[Mapping[str, str]] = None,
    default_input_tensor_device: str = "GPU",
    requirements: Union[None, str, Iterable[str]] = None,
    zip_compression: Optional[int] = AUTO_COMPRESSION,
    keep_failed: bool = False,
    self_test_options: Optional[Dict[str, Any]] = None,
    neuropod_load_args: Optional[Mapping[str, Any]] = None,
) -> Path:
    """Write a package and self-test it; return its path.

    Args:
        zip_compression: None (default: each file deflated unless it barely
            compresses, as weights do; those are stored), ``zipfile.ZIP_DEFLATED``
            or ``zipfile.ZIP_STORED`` for every file.
        keep_failed: when the self-test fails, leave the failed package at
            ``neuropod_path`` for inspection; the error says so. By default
            nothing is left behind.
        self_test_options: ``load_neuropod`` options of the self-test.
        neuropod_load_args: the original's name for the same options; merged
            with ``self_test_options`` (a keyword given in both is refused).
        problem: instead of ``input_spec`` and ``output_spec``: a
            ProblemDefinition, its dict form or a problem file (``problem.json``
            or a module; see ``neuropod.tools.problem``).

    Raises:
        PackageError: the target exists, or an input file is missing.
        SpecError: a spec or device setting is invalid.
        VersionRangeError: ``platform_version_semver`` is not a valid range.
        FrameworkVersionError: the self-test cannot run here, because the
            framework installed does not satisfy ``platform_version_semver``.
        TestMismatchError: the self-test's outputs differ from ``test_expected_out``.
    """
    input_spec, output_spec = problem_specs(problem, input_spec, output_spec, test_input_data, test_expected_out)
    load_options = _self_test_load_options(self_test_options, neuropod_load_args)
    target = Path(neuropod_path)
    if target.exists():
        raise PackageError(f"{target}: already exists; refusing to overwrite it")
    if zip_compression not in _ZIP_COMPRESSIONS:
        raise PackageError(
            f"zip_compression: expected None (per file), zipfile.ZIP_DEFLATED or zipfile.ZIP_STORED, "
            f"got {zip_compression!r}"
        )
    VersionRange.parse(platform_version_semver)  # an invalid range fails before anything is written
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
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    # The artifact is built (and self-tested) as ``work/<target name>``: same file name, other directory.
    artifact = work / target.name
    try:
        # A zip's tree is named after the target too (what the self-test's messages show).
        tree = work / "tree" / target.stem if package_as_zip else artifact
        (tree / layout.DATA_DIR).mkdir(parents=True)
        try:
            backend_settings = write_model(tree)
        except NeuropodError:
            raise
        except Exception as exc:  # the framework's own: one error class for every packager
            raise framework_failure(
                f"packaging {model_name!r} ({platform}): the framework failed to write the model",
                exc,
                "read the framework's error (chained below) and fix the model or this packager's arguments",
            ) from exc
        if backend_settings is not None:
            write_backend_config(tree, backend_settings)
        if op_paths:
            (tree / layout.OPS_DIR).mkdir(parents=True)
            for op in op_paths:
                copy_file(op, tree / layout.OPS_DIR / op.name)
        if pinned:
            (tree / layout.REQUIREMENTS).write_text("\n".join(pinned) + "\n", encoding="utf-8")
        config.write(tree)
        if persist_test_data and test_input_data is not None:
            write_test_data(tree, test_input_data, test_expected_out)
        if package_as_zip:
            # One pass over every file: hashed for the manifest while it is zipped.
            write_zip(tree, artifact, compression=zip_compression, add_manifest=True)
            # The self-test runs on the tree just zipped, not on a second extraction of the zip (a copy,
            # a hash and a check of every byte again): the zip is checked to hold each file of the tree
            # whole, and those bytes are the ones hashed into its manifest.
            check_zip_holds_tree(artifact, tree)
        else:
            write_manifest(tree)
        if test_input_data is not None:
            try:
                # Until a package can be run in an environment that satisfies its range, its self-test
                # runs here or not at all.
                check_platform_version(config.platform, config.platform_version_semver, f"self-test of {model_name!r}")
                run_self_test(tree, test_input_data, test_expected_out, **load_options)
            except BaseException as exc:
                if keep_failed:
                    _place(artifact, target)
                    _say_kept(exc, target)
                raise
        _place(artifact, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def _self_test_load_options(
    self_test_options: Optional[Mapping[str, Any]], neuropod_load_args: Optional[Mapping[str, Any]]
) -> Dict[str, Any]:
    """The self-test's ``load_neuropod`` keywords: ours and the original's name for them, merged."""
    both = sorted(set(self_test_options or {}) & set(neuropod_load_args or {}))
    if both:
        raise PackageError(
            f"self_test_options and neuropod_load_args both give {both}; pass each load_neuropod keyword once"
        )
    return {**(neuropod_load_args or {}), **(self_test_options or {})}


def _place(artifact: Path, target: Path) -> None:
    """Rename the finished artifact to ``target``, refusing to replace one that appeared meanwhile."""
    if target.exists():
        raise PackageError(f"{target}: appeared while packaging; refusing to overwrite it")
    os.rename(artifact, target)


def _say_kept(exc: BaseException, target: Path) -> None:
    """Add where the failed package was kept to the error's message (same class, same attributes)."""
    note = f"(the failed package was kept at {target}, as keep_failed=True asked)"
    if exc.args and isinstance(exc.args[0], str):
        exc.args = (f"{exc.args[0]}\n{note}",) + exc.args[1:]
    else:
        exc.args = (*exc.args, note)
