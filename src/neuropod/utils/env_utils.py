"""The original's ``neuropod.utils.env_utils``: running a package in a new Python process.

:func:`eval_in_new_process` pickles the inputs and the ``load_neuropod``
keywords into a private temporary directory and runs
``python -m neuropod.loader`` on them (see :mod:`neuropod._eval_main` for
which pickles that entry point reads).
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import tempfile
from typing import Any, Dict, Mapping, Optional, Sequence

import numpy as np

__all__ = ["eval_in_new_process"]


def eval_in_new_process(
    neuropod_path: Any,
    input_data: Mapping[str, Any],
    binary_path: str = sys.executable,
    extra_args: Sequence[str] = (),
    neuropod_load_args: Optional[Mapping[str, Any]] = None,
    **kwargs: Any,
) -> Dict[str, np.ndarray]:
    """Load and run a package in a new process on ``input_data``; return its outputs.

    Args:
        neuropod_path: the package.
        input_data: a picklable dict of input name -> numpy array.
        binary_path: the Python interpreter to run (this one by default); it
            must be able to import neuropod.
        extra_args: more command-line arguments for ``python -m neuropod.loader``.
        neuropod_load_args: a picklable dict of ``load_neuropod`` keywords.
        **kwargs: passed to ``subprocess.check_call`` (``env=``, ``timeout=`` ...).

    Raises:
        subprocess.CalledProcessError: the process failed (its stderr says why).
    """
    with tempfile.TemporaryDirectory(prefix="neuropod-eval-") as tmpdir:  # mode 0700: only this user
        paths = {}
        for name, value in (("input", dict(input_data)), ("args", dict(neuropod_load_args or {})), ("output", None)):
            fd, paths[name] = tempfile.mkstemp(dir=tmpdir, suffix=".pkl")  # mode 0600
            with os.fdopen(fd, "wb") as f:
                if value is not None:
                    pickle.dump(value, f, protocol=pickle.HIGHEST_PROTOCOL)
        # runpy warns that neuropod.loader was imported (by neuropod/__init__) before it runs as __main__: harmless.
        quiet = ["-W", "ignore:'neuropod.loader' found in sys.modules:RuntimeWarning"]
        command = [binary_path, *quiet, "-m", "neuropod.loader", "--neuropod-path", os.fspath(neuropod_path)]
        command += ["--input-pkl-path", paths["input"], "--output-pkl-path", paths["output"]]
        command += ["--args-pkl-path", paths["args"], *extra_args]
        subprocess.check_call(command, **kwargs)
        with open(paths["output"], "rb") as f:  # written by the child, in this user's private directory
            outputs: Dict[str, np.ndarray] = pickle.load(f)
        return outputs
