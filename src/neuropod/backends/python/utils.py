"""The original's ``neuropod.backends.python.utils``: preinstalling a Python model's dependencies."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

__all__ = ["preinstall_deps"]

_MODEL_SOURCE = "def get_model(_):\n    return lambda: {}\n"


def preinstall_deps(backend_version: str, requirements: Any) -> None:
    """Build (or find) the Python environment for ``requirements`` now, so that later loads start fast.

    As in the original, a Python package with no inputs and these
    requirements is written and loaded, which builds its environment in the
    environment cache (see ``neuropod envs``).

    Args:
        backend_version: the Python version range the environment is for (``"3.11"``, ``"*"``).
        requirements: pinned requirements (``name==version`` lines, a string or a list).
    """
    from ...loader import load_neuropod
    from .packager import create_python_neuropod

    with tempfile.TemporaryDirectory(prefix="neuropod-preinstall-") as tmp:
        code = Path(tmp) / "code"
        code.mkdir()
        (code / "model.py").write_text(_MODEL_SOURCE, encoding="utf-8")
        path = create_python_neuropod(
            neuropod_path=Path(tmp) / "preinstall",
            model_name="temp_preload_model",
            data_paths=[],
            code_path_spec=[{"python_root": str(code), "dirs_to_package": [""]}],
            entrypoint_package="model",
            entrypoint="get_model",
            input_spec=[],
            output_spec=[],
            platform_version_semver=backend_version,
            requirements=requirements,
            package_as_zip=False,
        )
        load_neuropod(path).close()
