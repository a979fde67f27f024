"""The main process on every supported Python: the framework-free suite on 3.9-3.13, and each framework's
suite on the oldest and the newest Python that framework's current releases support.

``python scripts/pythons.py [--frameworks onnx,tensorflow,jax] [--skip-core]`` (run by ``bash scripts/dev.sh test``):

- ``tests/unit`` in a venv per Python (3.9 with numpy 1.x, the others with the newest numpy) holding the
  project (editable) and no framework. Tests of a framework there skip (they run in the main suite);
- for each framework below, its test file in a venv of the oldest and of the newest Python this machine has
  that the framework's newest release supports (uv picks the release; the venv holds the project with that
  extra). The framework must import there; tests that need another framework as well (torch, which has no
  CPU build for those Pythons here) skip in these venvs and run in the main suite.

Venvs live in ``.cache/pythons`` and are made with uv (hard links from its cache: seconds once downloaded).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent))
from installed import CACHE, PYTHONS, REPO, find_python, log, uv  # noqa: E402

# framework -> (extra, the module it brings, its test files)
FRAMEWORKS: Dict[str, Tuple[str, str, Sequence[str]]] = {
    "onnx": ("onnx", "onnxruntime", ["tests/frameworks/test_onnx.py"]),
    "tensorflow": ("tensorflow", "tensorflow", ["tests/frameworks/test_tensorflow.py"]),
    "jax": ("jax", "jax", ["tests/frameworks/test_jax.py"]),
    "keras": ("keras,tensorflow", "keras", ["tests/frameworks/test_keras.py"]),  # on TensorFlow, its default
}


def make_venv(name: str, python: str, requirements: List[str]) -> Optional[Path]:
    """A venv of ``python`` with ``requirements``; None when uv finds no release for this Python."""
    venv = CACHE / "pythons" / name
    stamp = repr((python, requirements))
    if (venv / "stamp").exists() and (venv / "stamp").read_text() == stamp:
        return venv
    subprocess.run([uv(), "venv", "-q", "--clear", "--python", find_python(python), str(venv)], check=True)
    install = [uv(), "pip", "install", "-q", "--python", str(venv / "bin" / "python"), *requirements]
    result = subprocess.run(install, capture_output=True, text=True)
    if result.returncode != 0:
        log(f"{name}: nothing installs on Python {python}: {result.stderr.strip().splitlines()[-1:]}")
        return None
    (venv / "stamp").write_text(stamp)
    return venv


def run_pytest(venv: Path, files: Sequence[str], require_frameworks: bool) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["NEUROPOD_REQUIRE_FRAMEWORKS"] = "1" if require_frameworks else "0"
    argv = [str(venv / "bin" / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider", *files]
    if subprocess.run(argv, cwd=REPO, env=env).returncode != 0:
        raise SystemExit(f"{' '.join(files)} failed with {venv.name}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frameworks", default=",".join(FRAMEWORKS))
    parser.add_argument("--skip-core", action="store_true")
    args = parser.parse_args()
    project = f"-e{REPO}"
    if not args.skip_core:
        for python in PYTHONS:
            numpy = "numpy<2" if python == PYTHONS[0] else "numpy"
            venv = make_venv(f"py{python}-core", python, [project, numpy, "pytest", "hypothesis"])
            assert venv is not None, f"the core does not install on Python {python}"
            log(f"tests/unit on Python {python}")
            run_pytest(venv, ["tests/unit"], require_frameworks=False)
    for framework in filter(None, args.frameworks.split(",")):
        extra, module, files = FRAMEWORKS[framework]
        ran = []
        for pythons in (PYTHONS, tuple(reversed(PYTHONS))):  # the oldest that works, then the newest
            for python in pythons:
                if python in ran:
                    break
                venv = make_venv(f"py{python}-{extra}", python, [f"{project}[{extra}]", "pytest", "hypothesis"])
                if venv is None:
                    continue
                probe = [str(venv / "bin" / "python"), "-c", f"import {module}; print({module}.__version__)"]
                version = subprocess.run(probe, capture_output=True, text=True, check=True).stdout.strip()
                log(f"{' '.join(files)} on Python {python} with {module} {version}")
                run_pytest(venv, files, require_frameworks=False)
                ran.append(python)
                break
        if not ran:
            raise SystemExit(f"{framework}: installs on no Python of {PYTHONS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
