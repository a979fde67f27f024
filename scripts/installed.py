"""The project as users get it: build the wheel, install it into fresh venvs, run the installed-package suite.

``python scripts/installed.py [--pythons 3.9,3.13] [--skip-readme]`` (``bash scripts/dev.sh installed``):

1. builds the sdist and the wheel into ``.cache/dist`` (``SOURCE_DATE_EPOCH`` is the commit's time, so two
   builds of one commit give the same wheel);
2. makes one venv per case under ``.cache/installed`` with uv: the wheel (not ``-e``) with exactly the case's
   extras, on the case's Python;
3. runs ``tests/installed`` in each, with that venv's interpreter, from a directory outside the checkout
   (so ``src/`` cannot be imported), and checks every test passed in at least one venv (a test skipped
   everywhere is a missing piece);
4. runs the README top to bottom, each stretch of blocks in the venv of the extras its
   ``<!-- extras: ... -->`` line names, on Python 3.11; the quickstart (the blocks before the first extras
   line that names something beyond the core and torch) on the oldest and the newest Python too.

Venvs are reused when the wheel and the case are unchanged (a hash in the venv); uv's cache makes a
fresh one cost seconds.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Set, Tuple

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / ".cache"
sys.path.insert(0, str(REPO / "tests" / "docs"))
from markdown_blocks import Block, read_blocks  # noqa: E402
from run_markdown import runnable  # noqa: E402

PYTHONS = ("3.9", "3.10", "3.11", "3.12", "3.13")
MAIN_PYTHON = "3.11"
# Each extra's commands run in a venv holding that extra alone, on the main Python.
EXTRA_CASES = ("serve", "tools", "trust", "envs")
# Torch the venvs get before the wheel: a CPU build (an unpinned torch from the index is a multi-GB CUDA build).
# 3.11: the CPU wheel of this machine's pip find-links; 3.9: 1.10.2, which bundles its libraries, was built
# against numpy 1.x, and imports pkg_resources (a venv made by python -m venv on 3.9 has it, one made by uv not).
TORCH_BY_PYTHON = {"3.9": ["torch==1.10.2", "numpy<2", "setuptools<70"]}


def log(message: str) -> None:
    print(f"[{Path(sys.argv[0]).stem}] {message}", flush=True)


def uv() -> str:
    found = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    if not found:
        raise SystemExit("uv is needed (pip install uv)")
    return found


def build_dists(source: Path, out: Path, epoch: str, *what: str) -> None:
    shutil.rmtree(out, ignore_errors=True)
    env = dict(os.environ, SOURCE_DATE_EPOCH=epoch)
    argv = [sys.executable, "-m", "build", *what, "--outdir", str(out), str(source)]
    subprocess.run(argv, check=True, env=env, stdout=subprocess.DEVNULL)


def build_reproducibly() -> Path:
    """The sdist and the wheel of this checkout, then the wheel again from that sdist: the same bytes."""
    out = CACHE / "dist"
    log(f"building the sdist and the wheel into {out}")
    # The time of the commit the checkout is at: file times in the wheel do not depend on when it was built.
    epoch = subprocess.run(["git", "log", "-1", "--format=%ct"], cwd=REPO, capture_output=True, text=True).stdout
    epoch = epoch.strip() or "315532800"
    build_dists(REPO, out, epoch)
    (wheel,) = out.glob("*.whl")
    (sdist,) = out.glob("*.tar.gz")
    with tempfile.TemporaryDirectory() as unpacked:
        shutil.unpack_archive(str(sdist), unpacked)
        (source,) = Path(unpacked).iterdir()
        build_dists(source, CACHE / "dist-again", epoch, "--wheel")
    (again,) = (CACHE / "dist-again").glob("*.whl")
    if wheel.read_bytes() != again.read_bytes():
        raise SystemExit(f"two builds of one source gave different wheels: {wheel} and {again}")
    log(f"{wheel.name}: a second build gave the same bytes")
    return wheel


def find_python(version: str) -> str:
    """This machine's CPython ``version`` (pyenv's, or one on PATH); uv installs one where there is none."""
    root = (
        subprocess.run(["pyenv", "root"], capture_output=True, text=True).stdout.strip()
        if shutil.which("pyenv")
        else ""
    )
    candidates = sorted(glob.glob(f"{root or os.path.expanduser('~/.pyenv')}/versions/{version}.*/bin/python{version}"))
    candidates += [shutil.which(f"python{version}") or ""]
    for candidate in filter(None, candidates):
        probe = subprocess.run(
            [candidate, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"], capture_output=True, text=True
        )
        if probe.stdout.strip() == version:
            return candidate
    log(f"no Python {version} here: uv installs one")
    subprocess.run([uv(), "python", "install", version], check=True)
    return subprocess.run(
        [uv(), "python", "find", "--managed-python", version], capture_output=True, text=True, check=True
    ).stdout.strip()


def local_torch_wheel(version: str) -> Optional[str]:
    """The CPU torch wheel in pip's find-links for this Python, if the machine has one."""
    links = subprocess.run(
        [sys.executable, "-m", "pip", "config", "get", "global.find-links"], capture_output=True, text=True
    ).stdout.split()
    tag = "cp" + version.replace(".", "")
    for folder in links:
        wheels = sorted(glob.glob(os.path.join(folder, f"torch-*+cpu-{tag}-{tag}-*.whl")))
        if wheels:
            return wheels[-1]
    return None


@dataclass(frozen=True)
class Case:
    python: str
    extras: Tuple[str, ...]

    @property
    def name(self) -> str:
        return f"py{self.python}-{'-'.join(self.extras) or 'core'}"


def make_venv(case: Case, wheel: Path) -> Path:
    venv = CACHE / "installed" / case.name
    stamp = hashlib.sha256(wheel.read_bytes() + repr(case).encode()).hexdigest()
    if (venv / "neuropod-installed.stamp").exists() and (venv / "neuropod-installed.stamp").read_text() == stamp:
        return venv
    shutil.rmtree(venv, ignore_errors=True)
    log(f"{case.name}: a fresh venv with {wheel.name}[{','.join(case.extras)}]")
    python = find_python(case.python)
    subprocess.run([uv(), "venv", "-q", "--python", python, str(venv)], check=True)
    install = [uv(), "pip", "install", "-q", "--python", str(venv / "bin" / "python")]
    if "torch" in case.extras or "all" in case.extras:
        local = local_torch_wheel(case.python)
        torch = [local] if local else TORCH_BY_PYTHON.get(case.python)
        if torch is None:
            raise SystemExit(f"no CPU build of torch for Python {case.python} on this machine")
        subprocess.run(install + torch, check=True)
    spec = f"{wheel}[{','.join(case.extras)}]" if case.extras else str(wheel)
    subprocess.run(install + [spec, "pytest"], check=True)
    (venv / "neuropod-installed.stamp").write_text(stamp)
    return venv


def clean_env(venv: Path) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return env


def run_suite(case: Case, venv: Path, other_python: str, results: Path) -> None:
    env = clean_env(venv)
    env.update(
        NEUROPOD_INSTALLED_EXTRAS=",".join(case.extras),
        NEUROPOD_INSTALLED_OTHER_PYTHON=other_python,
        NEUROPOD_INSTALLED_FIXTURES=str(REPO / "tests" / "fixtures" / "legacy"),
    )
    tests = REPO / "tests" / "installed"
    log(f"{case.name}: tests/installed")
    with tempfile.TemporaryDirectory(prefix="neuropod-installed-") as cwd:
        argv = [
            str(venv / "bin" / "python"),
            "-m",
            "pytest",
            str(tests),
            "-q",
            "-p",
            "no:cacheprovider",
            f"--confcutdir={tests}",
            f"--rootdir={tests}",
            f"--junitxml={results / (case.name + '.xml')}",
        ]
        if subprocess.run(argv, cwd=cwd, env=env).returncode != 0:
            raise SystemExit(f"the installed-package suite failed in {case.name}")


def check_every_test_passed_somewhere(results: Path) -> None:
    passed: Set[str] = set()
    seen: Set[str] = set()
    for report in results.glob("*.xml"):
        for test in ElementTree.parse(report).iter("testcase"):
            name = f"{test.get('classname')}.{test.get('name')}"
            seen.add(name)
            if not any(child.tag in ("skipped", "failure", "error") for child in test):
                passed.add(name)
    never = sorted(seen - passed)
    if never:
        raise SystemExit(f"tests that passed in no venv (skipped everywhere): {never}")
    log(f"{len(seen)} tests, each passed in at least one venv")


def stretches(blocks: Sequence[Block]) -> List[Tuple[Tuple[str, ...], List[Block]]]:
    """Consecutive runnable blocks grouped by the extras they need."""
    groups: List[Tuple[Tuple[str, ...], List[Block]]] = []
    for block in blocks:
        if block.extras is None:
            raise SystemExit(f"README.md:{block.line}: no '<!-- extras: ... -->' line before this block")
        if groups and groups[-1][0] == block.extras:
            groups[-1][1].append(block)
        else:
            groups.append((block.extras, [block]))
    return groups


def run_readme(wheel: Path, python: str, quickstart_only: bool) -> None:
    readme = REPO / "README.md"
    blocks = [b for b in read_blocks(readme) if runnable(b, all_python=True)]
    groups = stretches(blocks)
    if quickstart_only:
        first_other = next((i for i, (extras, _) in enumerate(groups) if set(extras) - {"torch"}), len(groups))
        groups = groups[:first_other]
        if python not in TORCH_BY_PYTHON and not local_torch_wheel(python):
            groups = [g for g in groups if "torch" not in g[0]]
    with tempfile.TemporaryDirectory(prefix="neuropod-readme-") as cwd:
        for extras, group in groups:
            venv = make_venv(Case(python, extras), wheel)
            lines = f"{group[0].line}-{group[-1].line}"
            log(f"README.md lines {lines} on Python {python} with [{','.join(extras)}]")
            argv = [
                str(venv / "bin" / "python"),
                str(REPO / "tests" / "docs" / "run_markdown.py"),
                str(readme),
                "--all-python",
                f"--lines={lines}",
            ]
            if subprocess.run(argv, cwd=cwd, env=clean_env(venv), timeout=1800).returncode != 0:
                raise SystemExit(f"README.md lines {lines} failed on Python {python} with [{','.join(extras)}]")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pythons", default=",".join(PYTHONS), help="the core's Pythons (default: 3.9-3.13)")
    parser.add_argument("--skip-readme", action="store_true")
    args = parser.parse_args()
    started = time.monotonic()
    wheel = build_reproducibly()
    results = CACHE / "installed" / "results"
    shutil.rmtree(results, ignore_errors=True)
    results.mkdir(parents=True)
    other = make_venv_other()
    cases = [Case(p, ()) for p in args.pythons.split(",")] + [Case(MAIN_PYTHON, (extra,)) for extra in EXTRA_CASES]
    for case in cases:
        run_suite(case, make_venv(case, wheel), other, results)
    check_every_test_passed_somewhere(results)
    if not args.skip_readme:
        run_readme(wheel, MAIN_PYTHON, quickstart_only=False)
        for python in (PYTHONS[0], PYTHONS[-1]):
            run_readme(wheel, python, quickstart_only=True)
    log(f"all green in {time.monotonic() - started:.0f} s")
    return 0


def make_venv_other() -> str:
    """Another interpreter's venv with numpy 1.x and nothing of neuropod: a worker's ``python_executable``."""
    venv = CACHE / "installed" / "py3.9-numpy1-only"
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([uv(), "venv", "-q", "--python", find_python("3.9"), str(venv)], check=True)
        subprocess.run([uv(), "pip", "install", "-q", "--python", str(python), "numpy<2"], check=True)
    return str(python)


if __name__ == "__main__":
    sys.exit(main())
