"""Persisted test data: a safe ``.npz`` (never pickle), and the legacy pickle.

Layout of ``test_data.npz``: one array per tensor under ``input/NAME`` and
``output/NAME``. bfloat16 arrays are stored as their uint16 bit patterns and
listed in ``__bfloat16__`` so they load back with their dtype.
"""

from __future__ import annotations

import pickle
import stat
import zipfile
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np

from ..errors import PackageError, UnsafePackageError
from ..spec import numpy_dtype
from . import layout
from .files import ZIP_READ_ERRORS

__all__ = ["write_test_data", "read_test_data"]

TensorDict = Dict[str, np.ndarray]
_BF16_KEY = "__bfloat16__"
#: Largest persisted test data read back (the arrays' size, not the archive's).
TEST_DATA_MAX_BYTES = 1 << 30


def write_test_data(root: Path, test_input: Mapping[str, Any], test_output: Optional[Mapping[str, Any]]) -> None:
    arrays: Dict[str, np.ndarray] = {}
    bf16 = []
    for prefix, tensors in (("input", test_input), ("output", test_output or {})):
        for name, value in tensors.items():
            key = f"{prefix}/{name}"
            array = np.asarray(value)
            if array.dtype.name == "bfloat16":
                bf16.append(key)
                array = array.view(np.uint16)
            elif array.dtype.kind == "S":
                array = np.char.decode(array, "utf-8")
            elif array.dtype.kind == "O":
                raise PackageError(
                    f"test data {prefix} {name!r}: object arrays cannot be stored; use a numeric or string dtype"
                )
            arrays[key] = array
    arrays[_BF16_KEY] = np.array(bf16, dtype="U")
    np.savez(root / layout.TEST_DATA, **arrays)  # type: ignore[arg-type]


def _check_test_data(path: Path) -> None:
    """A regular file whose arrays, as declared by the archive, fit the bound (a small zip may expand hugely)."""
    mode = path.lstat().st_mode
    if not stat.S_ISREG(mode):
        raise UnsafePackageError(f"{path}: not a regular file; refusing to read it")
    try:
        with zipfile.ZipFile(path) as archive:
            declared = sum(info.file_size for info in archive.infolist())
    except ZIP_READ_ERRORS as exc:
        raise PackageError(f"{path}: not a valid .npz archive: {type(exc).__name__}: {exc}") from None
    if declared > TEST_DATA_MAX_BYTES:
        raise PackageError(
            f"{path}: its arrays take {declared} bytes, more than the {TEST_DATA_MAX_BYTES} test data may hold"
        )


def read_test_data(root: Path, trusted: bool = False) -> Optional[Tuple[TensorDict, TensorDict]]:
    """Return ``(test_input, test_expected_out)``, or None if the package has none.

    Raises:
        UnsafePackageError: when only a legacy pickle exists and ``trusted`` is False.
    """
    path = root / layout.TEST_DATA
    if path.exists() or path.is_symlink():
        _check_test_data(path)
        try:
            with np.load(path, allow_pickle=False) as npz:
                bf16 = set(npz[_BF16_KEY].tolist()) if _BF16_KEY in npz.files else set()
                data: Dict[str, TensorDict] = {"input": {}, "output": {}}
                for key in npz.files:
                    if key == _BF16_KEY:
                        continue
                    prefix, _, name = key.partition("/")
                    if prefix not in data or not name:
                        raise PackageError(f"{path}: unexpected entry {key!r}")
                    array = npz[key]
                    data[prefix][name] = array.view(numpy_dtype("bfloat16")) if key in bf16 else array
        except PackageError:
            raise
        except ZIP_READ_ERRORS as exc:
            raise PackageError(f"{path}: cannot be read: {type(exc).__name__}: {exc}") from None
        return data["input"], data["output"]
    legacy = root / layout.LEGACY_TEST_DATA
    if legacy.exists():
        if not trusted:
            raise UnsafePackageError(
                f"{legacy}: legacy pickled test data runs code when loaded; "
                "pass trusted=True only for packages from a source you trust"
            )
        with open(legacy, "rb") as f:
            data_pkl = pickle.load(f)  # noqa: S301 - the caller declared the package trusted
        return dict(data_pkl["test_input"]), dict(data_pkl.get("test_output") or {})
    return None
