"""Python-code packages the OPE tests and bench/ope.py run in workers.

``make_tool_model`` builds a model whose behaviour the caller picks with the
string input ``cmd``: ``""`` adds one, ``exit`` / ``segv`` / ``kill`` / ``hang``
kill or hang the worker, ``raise`` raises, ``busy`` burns CPU in Python for
``x[0]`` seconds and reports when it ran and how much CPU it got, ``extra``
also returns an output ``dbg`` that is not in the spec.
``make_identity_model`` returns its inputs unchanged (the benchmark's model).
"""

from __future__ import annotations

import contextlib
import os
import socket
import textwrap
from pathlib import Path
from typing import Any, Iterator, Tuple, Union

from neuropod.ope.channel import MAILBOX_BYTES, Channel
from neuropod.ope.shm import Segment
from neuropod.packagers import create_python_neuropod

TOOL_CODE = """
import ctypes
import os
import signal
import time

import numpy as np


def get_model(data_root):
    def run(x=None, cmd=None, words=None):
        command = str(cmd.reshape(-1)[0]) if cmd is not None and cmd.size else ""
        if command == "exit":
            os._exit(7)
        if command == "segv":
            ctypes.string_at(0)
        if command == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if command == "hang":
            time.sleep(3600)
        if command == "raise":
            raise KeyError("boom from the model")
        out = {"pid": np.array([os.getpid()], np.int64)}
        if command == "busy":
            wall0, cpu0 = time.monotonic(), time.thread_time()
            count = 0
            while time.monotonic() - wall0 < float(x[0]):
                count += 1
            out["span"] = np.array([wall0, time.monotonic(), time.thread_time() - cpu0], np.float64)
        if x is not None:
            out["y"] = x + 1
            out["same"] = x
        if words is not None:
            out["shout"] = np.char.upper(words)
        if command == "extra":  # an output the spec does not have, of a dtype no wire carries
            out["dbg"] = np.ones(2, np.complex64)
        return out

    return run
"""

IDENTITY_CODE = """
def get_model(data_root):
    def identity(**inputs):
        return dict(inputs)

    return identity
"""

TOOL_INPUTS = [
    {"name": "x", "dtype": "float64", "shape": ["n"]},
    {"name": "cmd", "dtype": "string", "shape": [1]},
    {"name": "words", "dtype": "string", "shape": [None, None]},
]
TOOL_OUTPUTS = [
    {"name": "y", "dtype": "float64", "shape": ["n"]},
    {"name": "same", "dtype": "float64", "shape": ["n"]},
    {"name": "pid", "dtype": "int64", "shape": [1]},
    {"name": "span", "dtype": "float64", "shape": [3]},
    {"name": "shout", "dtype": "string", "shape": [None, None]},
]


def _make(root: Path, name: str, code: str, inputs: list, outputs: list, **options: Any) -> Path:
    code_dir = root / f"{name}_code"
    (code_dir / f"{name}_pkg").mkdir(parents=True)
    (code_dir / f"{name}_pkg" / "__init__.py").write_text(textwrap.dedent(code))
    return create_python_neuropod(
        root / name,
        name,
        data_paths=[],
        code_path_spec=[{"python_root": str(code_dir), "dirs_to_package": [f"{name}_pkg"]}],
        entrypoint_package=f"{name}_pkg",
        entrypoint="get_model",
        input_spec=inputs,
        output_spec=outputs,
        **options,
    )


def make_tool_model(root: Union[str, Path], name: str = "tool", **options: Any) -> Path:
    return _make(Path(root), name, TOOL_CODE, TOOL_INPUTS, TOOL_OUTPUTS, **options)


def make_identity_model(root: Union[str, Path], dtype: str = "uint8", name: str = "identity") -> Path:
    spec = [{"name": "x", "dtype": dtype, "shape": [None]}]
    return _make(Path(root), name, IDENTITY_CODE, spec, spec)


def fd_targets() -> list:
    """What each of this process's open descriptors points at, sorted (for leak checks)."""
    targets = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            targets.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:  # the descriptor listdir itself used
            pass
    return sorted(targets)


@contextlib.contextmanager
def channel_pair() -> Iterator[Tuple[Channel, Channel]]:
    """Both ends of a control channel in this process: (the parent's, the worker's)."""
    mailbox = Segment.create(0, MAILBOX_BYTES, "/dev/shm")
    here, there = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ends = Channel(here, mailbox.memory, side=0), Channel(there, mailbox.memory, side=1)
    try:
        yield ends
    finally:
        for end in ends:
            end.close()
        mailbox.close()
