"""A real ``python``-platform package whose code attacks its host when asked.

The string input ``attack`` names the attack and ``arg`` its target; the
string output ``result`` says what happened, ``"BLOCKED <error>"`` or
``"DONE <what it got>"``, so each test asserts the exact way it failed.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any, Union

import numpy as np

from neuropod.packagers import create_python_neuropod

HOSTILE_CODE = """
import os
import signal
import socket
import time

import numpy as np


def _try(action):
    try:
        return "DONE " + str(action())
    except BaseException as exc:  # MemoryError too: report it, as the model would see it
        if isinstance(exc, MemoryError):
            raise
        return f"BLOCKED {type(exc).__name__}: {exc}"


def _read(path):
    with open(path, "rb") as f:
        return f.read(200)


def _write(paths):
    done = []
    for path in paths.split("|"):
        try:
            with open(path, "w") as f:
                f.write("pwned")
            done.append("wrote " + path)
        except OSError as exc:
            done.append(f"refused {path}: {type(exc).__name__}")
    if any(item.startswith("wrote") for item in done):
        return "; ".join(done)
    raise PermissionError("; ".join(done))


def _connect(port):
    with socket.create_connection(("127.0.0.1", int(port)), timeout=2) as s:
        s.sendall(b"hello from the model")
    return "connected"


def _signal(pid):
    os.kill(int(pid), signal.SIGUSR1)
    return "signalled"


def _proc(pid):
    return _read(f"/proc/{pid}/environ")


def _fork_bomb(count):
    children = []
    try:
        for _ in range(int(count)):
            pid = os.fork()
            if pid == 0:
                time.sleep(2)
                os._exit(0)
            children.append(pid)
    except OSError as exc:
        raise OSError(f"fork failed after {len(children)} children: {exc}") from None
    finally:
        for pid in children:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    return f"forked {len(children)}"


def _eat(nbytes):
    block = np.ones(int(nbytes), np.uint8)
    return f"allocated {block.nbytes}"


def _shared_memory(pid):
    seen = sorted(os.listdir("/dev/shm"))
    fds = os.listdir(f"/proc/{pid}/fd")
    return f"/dev/shm {seen}; fds of {pid}: {fds}"


def _open_files(count):
    files = []
    try:
        for _ in range(int(count)):
            files.append(open("/dev/null"))
    except OSError as exc:
        raise OSError(f"open failed after {len(files)} files: {exc}") from None
    finally:
        for f in files:
            f.close()
    return f"opened {len(files)}"


def _hang(seconds):
    time.sleep(float(seconds))
    return "woke up"


ATTACKS = {
    "open_files": _open_files,
    "hang": _hang,
    "cpus": lambda _: f"cpus {len(os.sched_getaffinity(0))} threads {os.environ.get('OMP_NUM_THREADS')}",
    "read": _read,
    "write": _write,
    "connect": _connect,
    "signal": _signal,
    "proc": _proc,
    "fork_bomb": _fork_bomb,
    "memory": _eat,
    "shared_memory": _shared_memory,
    "tmp": lambda path: _write(path) and _read(path),
    "whoami": lambda _: f"pid {os.getpid()} ppid {os.getppid()} uid {os.getuid()} cwd {os.getcwd()}",
}


def get_model(data_root):
    def run(attack, arg):
        name, target = str(attack[0]), str(arg[0])
        return {"result": np.array([_try(lambda: ATTACKS[name](target))])}

    return run
"""

INPUTS = [{"name": "attack", "dtype": "string", "shape": [1]}, {"name": "arg", "dtype": "string", "shape": [1]}]
OUTPUTS = [{"name": "result", "dtype": "string", "shape": [1]}]


def make_hostile_model(root: Union[str, Path], name: str = "hostile", **options: Any) -> Path:
    root = Path(root)
    code_dir = root / f"{name}_code"
    (code_dir / f"{name}_pkg").mkdir(parents=True)
    (code_dir / f"{name}_pkg" / "__init__.py").write_text(textwrap.dedent(HOSTILE_CODE))
    return create_python_neuropod(
        root / name,
        name,
        data_paths=[],
        code_path_spec=[{"python_root": str(code_dir), "dirs_to_package": [f"{name}_pkg"]}],
        entrypoint_package=f"{name}_pkg",
        entrypoint="get_model",
        input_spec=INPUTS,
        output_spec=OUTPUTS,
        **options,
    )


def attack(model: Any, name: str, arg: object = "") -> str:
    """Run one attack; the model's own account of what happened."""
    out = model.infer({"attack": np.array([name]), "arg": np.array([str(arg)])})
    return str(out["result"][0])
