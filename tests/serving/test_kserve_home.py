"""The KServe v2 codec has one home, ``neuropod.kserve``, shared by the server and the remote client.

The client depends on no part of the server and on no part of the loader: the
remote executor returns an executor, and ``load_neuropod`` builds every
``Neuropod``. The protocol's constants are written once.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import neuropod

SRC = Path(neuropod.__file__).resolve().parent


def _imports(path: Path) -> set:
    """Every module ``path`` imports, as absolute ``neuropod.…`` names where relative."""
    package = ".".join(path.relative_to(SRC.parent).with_suffix("").parts[:-1])
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level:
                base = base[: len(base) - node.level + 1]
            module = ".".join(base + ([node.module] if node.module else [])) if node.level else node.module
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def test_the_remote_client_imports_nothing_of_the_server_or_the_loader():
    imported = _imports(SRC / "executors" / "remote.py")
    assert not {m for m in imported if m.startswith(("neuropod.serving", "neuropod.loader"))}, imported
    for path in (SRC / "kserve").rglob("*.py"):
        assert not {m for m in _imports(path) if m.startswith("neuropod.serving")}, path


def test_importing_the_client_loads_no_server_module():
    code = (
        "import sys, neuropod.executors.remote; "
        "print(','.join(m for m in sys.modules if m.startswith('neuropod.serving')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == ""


def test_protocol_constants_are_written_once():
    sources = {path: path.read_text(encoding="utf-8") for path in SRC.rglob("*.py")}
    for literal in ("256 * 1024 * 1024", '"Inference-Header-Content-Length"', '"binary_tensor_data"'):
        holders = [path.relative_to(SRC) for path, text in sources.items() if literal in text]
        assert holders == [Path("kserve/__init__.py")], (literal, holders)


def test_the_rest_framing_exists_once():
    # Both ends frame bodies with neuropod.kserve.rest; neither splits a body itself.
    for path in (SRC / "serving" / "rest_adapter.py", SRC / "executors" / "remote.py"):
        text = path.read_text(encoding="utf-8")
        assert "rest.split_body" in text and "json.loads(data[:" not in text and "def split_body" not in text
        assert '.get("binary_data_size")' not in text, path  # tensors are decoded by rest.decode_tensors


def test_the_remote_executor_is_an_executor_that_load_neuropod_wraps():
    from neuropod.executors.base import Executor
    from neuropod.executors.remote import RemoteExecutor

    assert issubclass(RemoteExecutor, Executor)
    assert not hasattr(sys.modules["neuropod.executors.remote"], "load_remote")
