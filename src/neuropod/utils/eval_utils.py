"""The original's ``neuropod.utils.eval_utils``: persisted test data, and running it.

Test data is stored in the safe format (``test_data.npz``, loaded without
pickle). A legacy ``test_data.pkl`` is read only with ``trusted=True``,
because unpickling runs code.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

import numpy as np

from ..package import open_package
from ..package.testdata import read_test_data, write_test_data
from ..selftest import run_self_test

__all__ = ["save_test_data", "load_test_data", "load_and_test_neuropod"]

PathLike = Union[str, "os.PathLike[str]"]


def save_test_data(
    neuropod_path: PathLike, test_input_data: Mapping[str, Any], test_expected_out: Optional[Mapping[str, Any]]
) -> None:
    """Store test data in the package directory ``neuropod_path`` (as ``test_data.npz``).

    Packagers do this themselves (``persist_test_data=True``) before the
    manifest is written; a file added to a finished package afterwards is
    refused by the manifest check when it is loaded.
    """
    write_test_data(Path(neuropod_path), test_input_data, test_expected_out)


def load_test_data(neuropod_path: PathLike, trusted: bool = False) -> Optional[Dict[str, Dict[str, np.ndarray]]]:
    """``{"test_input": ..., "test_output": ...}`` of a package directory or zip, or None when it has none.

    Raises:
        UnsafePackageError: only a legacy pickle is there and ``trusted`` is False.
    """
    path = Path(neuropod_path)
    root = path if path.is_dir() else open_package(path).root
    data = read_test_data(root, trusted=trusted)
    if data is None:
        return None
    return {"test_input": data[0], "test_output": data[1]}


def load_and_test_neuropod(
    neuropod_path: PathLike,
    test_input_data: Mapping[str, Any],
    test_expected_out: Optional[Mapping[str, Any]] = None,
    neuropod_load_args: Optional[Mapping[str, Any]] = None,
    **kwargs: Any,
) -> Dict[str, np.ndarray]:
    """Load the package, run ``test_input_data`` and compare with ``test_expected_out``; return the outputs.

    Extra keyword arguments are ignored, as in the original (its packagers
    passed all their options through).

    Raises:
        TestMismatchError: a ``ValueError`` naming each output that differs.
    """
    return run_self_test(neuropod_path, test_input_data, test_expected_out, **dict(neuropod_load_args or {}))
