"""The original's ``neuropod.utils.eval_utils``: persisted test data, and running it.

Test data is stored in the safe format (``test_data.npz``, loaded without
pickle). A legacy ``test_data.pkl`` is read only with ``trusted=True``,
because unpickling runs code.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

import numpy as np

from ..package import layout, open_package
from ..package.testdata import read_test_data, write_test_data
from ..selftest import check_outputs, run_self_test

__all__ = [
    "RUN_NATIVE_TESTS",
    "TEST_DATA_FILENAME",
    "check_output_matches_expected",
    "print_output_summary",
    "save_test_data",
    "load_test_data",
    "load_and_test_neuropod",
]

#: The original's switch (``NEUROPOD_RUN_NATIVE_TESTS``, unset or ``"true"``): False runs
#: :func:`load_and_test_neuropod` in a new process (``python -m neuropod.loader``).
RUN_NATIVE_TESTS = os.getenv("NEUROPOD_RUN_NATIVE_TESTS", "true") == "true"
#: The file persisted test data is stored in. The original pickled it to ``test_data.pkl``
#: (still read, from trusted packages); unpickling runs code, so it is written as npz here.
TEST_DATA_FILENAME = layout.TEST_DATA

logger = logging.getLogger(__name__)


def check_output_matches_expected(out: Mapping[str, Any], expected_out: Mapping[str, Any]) -> None:
    """Compare a model's outputs with the expected ones.

    Strings must be equal, numbers close (with a tolerance that suits the
    dtype, so a float16 model passes as it would have in float32).

    Raises:
        TestMismatchError: a ``ValueError`` naming every output that differs
            (expected and actual values shown).
    """
    check_outputs(expected_out, {key: np.asarray(value) for key, value in out.items()}, "the model")


def print_output_summary(out: Mapping[str, Any]) -> None:
    """Log (at INFO) each output's shape and dtype.

    Raises:
        ValueError: an output is not a numpy array.
    """
    logger.info("No expected test output specified; printing summary to stdout")
    for key, value in out.items():
        if not isinstance(value, np.ndarray):
            raise ValueError(f"All outputs must be numpy arrays! Output `{key}` was of type `{type(value)}`")
        logger.info("\t%s: np.array with shape %s and dtype %s", key, value.shape, value.dtype)


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

    With :data:`RUN_NATIVE_TESTS` False (``NEUROPOD_RUN_NATIVE_TESTS=false``)
    the package is run in a new process, as the original did to test custom
    ops in a clean interpreter. Extra keyword arguments are ignored, as in the
    original (its packagers passed all their options through).

    Raises:
        TestMismatchError: a ``ValueError`` naming each output that differs.
    """
    load_args = dict(neuropod_load_args or {})
    if RUN_NATIVE_TESTS:
        return run_self_test(neuropod_path, test_input_data, test_expected_out, **load_args)
    from .env_utils import eval_in_new_process

    out = eval_in_new_process(neuropod_path, test_input_data, neuropod_load_args=load_args)
    if test_expected_out is not None:
        check_output_matches_expected(out, test_expected_out)
    return out
