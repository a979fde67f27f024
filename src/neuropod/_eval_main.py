"""``python -m neuropod.loader``: the original's out-of-process evaluation entry point.

The original's ``neuropod.utils.env_utils.eval_in_new_process`` pickles the
inputs and the ``load_neuropod`` keyword arguments to files and runs::

    python -m neuropod.loader --neuropod-path P --input-pkl-path I \\
        --output-pkl-path O --args-pkl-path A

which loads the model, runs it on the inputs and pickles the outputs to ``O``.
This module does the same.

Unpickling runs code, so a pickle is read only when it can have come from the
caller that launched this process: it must be a regular file (not a link; the
last path component is opened with ``O_NOFOLLOW``), owned by this process's
user, and writable by no one else (no group or world write bit). The checks
are made on the opened file itself, so the file cannot be swapped between the
check and the read. ``eval_in_new_process`` writes its files with ``mkstemp``
(mode 0600, this user) in a private temporary directory, which passes. The
output file is written the same way: through a descriptor opened without
following a link, and only over a file of this user.

A mistake (a refused pickle, a package that does not load, inputs the model
refuses) is one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import pickle
import stat
import sys
from typing import Any, Callable, List, Optional

from .errors import NeuropodError, UntrustedPickleError

__all__ = ["main", "read_own_pickle", "write_own_pickle", "UntrustedPickleError"]


def _check_own_file(path: str, st: os.stat_result) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise UntrustedPickleError(f"{path}: expected a regular file, got another kind of file")
    if st.st_uid != os.getuid():
        raise UntrustedPickleError(
            f"{path}: owned by uid {st.st_uid}, not by this process's user (uid {os.getuid()}); "
            "only pickles written by the caller are read"
        )
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UntrustedPickleError(
            f"{path}: writable by other users (mode {stat.S_IMODE(st.st_mode):04o}); "
            "only pickles no one else could have changed are read"
        )


def _open_nofollow(path: str, flags: int, mode: int = 0o600) -> int:
    try:
        return os.open(path, flags | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), mode)
    except OSError as exc:
        if os.path.islink(path):
            raise UntrustedPickleError(f"{path}: a symbolic link; only regular files are read or written") from None
        raise UntrustedPickleError(f"{path}: cannot open: {exc.strerror}") from None


def read_own_pickle(path: str) -> Any:
    """Unpickle ``path`` if it is a regular file of this user that no one else can write.

    Raises:
        UntrustedPickleError: the file fails a check (named in the message) or cannot be unpickled.
    """
    fd = _open_nofollow(path, os.O_RDONLY)
    with os.fdopen(fd, "rb") as f:
        _check_own_file(path, os.fstat(f.fileno()))
        try:
            return pickle.load(f)
        except Exception as exc:  # any error of a damaged pickle
            raise UntrustedPickleError(f"{path}: not a readable pickle: {type(exc).__name__}: {exc}") from None


def write_own_pickle(path: str, value: Any) -> None:
    """Pickle ``value`` to ``path``: created (mode 0600) or replacing a regular file of this user, never via a link."""
    fd = _open_nofollow(path, os.O_WRONLY | os.O_CREAT)
    with os.fdopen(fd, "wb") as f:
        _check_own_file(path, os.fstat(f.fileno()))
        f.truncate(0)
        pickle.dump(value, f, protocol=pickle.HIGHEST_PROTOCOL)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m neuropod.loader",
        description="Load a model and run inference with pickled sample data (the original's eval_in_new_process).",
    )
    parser.add_argument("--neuropod-path", required=True, help="the package to load")
    parser.add_argument("--input-pkl-path", required=True, help="a pickled dict of input name -> numpy array")
    parser.add_argument("--args-pkl-path", default=None, help="a pickled dict of load_neuropod keyword arguments")
    parser.add_argument("--output-pkl-path", default=None, help="where to pickle the dict of outputs")
    return parser


def main(load_neuropod: Callable[..., Any], argv: Optional[List[str]] = None) -> int:
    """Run the entry point with ``load_neuropod`` (the loader's, passed in by ``neuropod.loader``'s main: this
    module sits below the loader); return the exit code (0, or 2 after printing one line for a mistake)."""
    args = _parser().parse_args(argv)

    try:
        load_args = read_own_pickle(args.args_pkl_path) if args.args_pkl_path is not None else {}
        if not isinstance(load_args, dict) or not all(isinstance(k, str) for k in load_args):
            raise UntrustedPickleError(
                f"{args.args_pkl_path}: expected a dict of load_neuropod keyword arguments, "
                f"got {type(load_args).__name__}"
            )
        inputs = read_own_pickle(args.input_pkl_path)
        with load_neuropod(args.neuropod_path, **load_args) as model:
            outputs = model.infer(inputs)
        if args.output_pkl_path is not None:
            write_own_pickle(args.output_pkl_path, outputs)
    except (NeuropodError, OSError) as exc:
        print(f"python -m neuropod.loader: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    return 0
