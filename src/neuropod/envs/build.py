"""Building an environment for a need: resolve, create, install, check, rename into place.

uv does the work when it is installed (``pip install neuropod-python[envs]``); pip
and ``venv`` otherwise. Each environment is keyed by a hash of exactly what
it holds (Python version, the pinned framework and the pins it needs, the
package's requirements, neuropod's worker version). Builds happen in a
``.tmp-*`` folder and are renamed into place only when complete, under a file
lock per key, so concurrent loads of one need build it once and nobody sees
half an environment.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Dict, List, Optional, Tuple

from filelock import FileLock, Timeout

from ..errors import EnvironmentBuildError, FrameworkVersionError, RequirementsError
from ..progress import StepProgress
from ..worker_path import worker_code_root
from .interpreters import Interpreter, discover_interpreters, find_uv
from .need import Need, era_pins, range_to_specifiers
from .store import METADATA, Environment, envs_dir, normalize_name, probe

__all__ = ["BuildPlan", "Builder", "worker_version"]

logger = logging.getLogger("neuropod.envs")


_SIZE = re.compile(r"^\s*Downloading (\S+) \(([\d.]+)(KiB|MiB|GiB|B)\)")
_DONE = re.compile(r"^\s*Downloaded (\S+)")
_UNITS = {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30}


def worker_version() -> str:
    from .._version import __version__
    from ..ope import wire

    return f"neuropod {__version__}, wire {wire.VERSION}"


@dataclass(frozen=True)
class BuildPlan:
    """What will be built for a need.

    Attributes:
        need: what it is for.
        interpreter: the base Python.
        requirements: everything installed (pinned framework first).
        key: the content hash naming the environment.
    """

    need: Need
    interpreter: Interpreter
    requirements: Tuple[str, ...]
    key: str

    @property
    def path(self) -> Path:
        return envs_dir() / self.key


def _key(python_version: str, requirements: Tuple[str, ...], find_links: Optional[str]) -> str:
    held = {
        "python": python_version,
        "requirements": sorted(requirements),
        "worker": worker_version(),
        "offline": bool(find_links),
    }
    return hashlib.sha256(json.dumps(held, sort_keys=True).encode()).hexdigest()[:16]


class Builder:
    """Resolves and builds environments.

    Args:
        uv: the uv binary (default: found by :func:`find_uv`; None falls back to pip).
        find_links: a local wheel folder: install only from it (offline mode).
            Default: ``$NEUROPOD_ENVS_FIND_LINKS``.
    """

    def __init__(self, uv: Optional[str] = "", find_links: Optional[str] = None) -> None:
        self.uv = find_uv() if uv == "" else uv
        self.find_links = find_links if find_links is not None else os.environ.get("NEUROPOD_ENVS_FIND_LINKS") or None

    # -- resolving ---------------------------------------------------------

    def _index_args(self) -> List[str]:
        return ["--no-index", "--find-links", self.find_links] if self.find_links else []

    def resolve(self, interpreter: Interpreter, requirements: List[str], wheels_only: bool = False) -> Tuple[bool, str]:
        """Pins for ``requirements`` under ``interpreter`` (True, "name==v\\n...") or (False, why not).

        ``wheels_only``: only releases with a wheel for this interpreter count (no source builds).
        """
        binary = ["--only-binary", ":all:"] if wheels_only else []
        if self.uv:
            argv = [self.uv, "pip", "compile", "--python", interpreter.executable, "--no-header", "--no-annotate"]
            argv += ["--quiet", *binary, *self._index_args(), "-"]
        else:
            argv = [interpreter.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet"]
            argv += ["--report", "-", *binary, *self._index_args(), *requirements]
        done = subprocess.run(
            argv, input="\n".join(requirements), capture_output=True, text=True, env=_tool_env(), timeout=600
        )
        if done.returncode != 0:
            lines = [line.strip() for line in done.stderr.splitlines() if line.strip()]
            return False, " ".join(lines[-3:]) or f"exit code {done.returncode}"
        if self.uv:
            return True, done.stdout
        report = json.loads(done.stdout)
        return True, "\n".join(f"{i['metadata']['name']}=={i['metadata']['version']}" for i in report["install"])

    def plan(self, need: Need) -> BuildPlan:
        """Choose a Python and the framework version for ``need``.

        Tries this process's Python version first, then the others newest
        first; for a range with ``||``, its highest alternative first. A Python
        for which every pin has a wheel wins over one that would build a
        release from source (``scikit-learn==0.22.0`` resolves on 3.11 too,
        but has wheels only up to 3.8, and builds from source nowhere here):
        source builds are tried only when no Python has wheels for it all.

        Raises:
            FrameworkVersionError / RequirementsError: nothing can be installed for it
                (names the range, what was found, and what was tried).
        """
        interpreters = [i for i in discover_interpreters(self.uv) if need.python_ok(i.version)]
        framework_specs: List[Optional[str]] = (
            [f"{need.distribution}{spec}" for spec in range_to_specifiers(need.framework_range)]
            if need.distribution
            else [None]
        )
        failures: List[Tuple[str, str]] = []
        for wheels_only in (True, False):
            failures = []
            for interpreter in interpreters:
                for framework in framework_specs:
                    wanted = [r for r in (framework, *need.requirements) if r]
                    ok, text = self.resolve(interpreter, wanted, wheels_only)
                    if not ok:
                        failures.append((interpreter.version, text))
                        continue
                    return self._plan_from_pins(need, interpreter, text)
        self._refuse(need, interpreters, failures)
        raise AssertionError("unreachable")

    def _plan_from_pins(self, need: Need, interpreter: Interpreter, pins_text: str) -> BuildPlan:
        pins = {}
        for line in pins_text.splitlines():
            name, sep, version = line.partition("==")
            if sep:
                pins[normalize_name(name.strip())] = version.split(";")[0].strip()
        requirements: List[str] = []
        if need.distribution:
            version = pins[normalize_name(need.distribution)]
            requirements.append(f"{need.distribution}=={version}")
            requirements += era_pins(need.distribution, version)
        requirements += list(need.requirements)
        for line in need.requirements:  # a Python package pinning torch==1.10.2 needs what a TorchScript one does
            name, sep, version = line.partition("==")
            if sep:
                requirements += [p for p in era_pins(normalize_name(name), version.strip()) if p not in requirements]
        held = {normalize_name(re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0]) for r in requirements}
        requirements += [r for r in need.worker_requirements if normalize_name(r) not in held]
        key = _key(interpreter.version, tuple(requirements), self.find_links)
        return BuildPlan(need, interpreter, tuple(requirements), key)

    def _refuse(self, need: Need, interpreters: List[Interpreter], failures: List[Tuple[str, str]]) -> None:
        where = f"{need.source}: " if need.source else ""
        pythons = ", ".join(i.version for i in interpreters) or "none"
        by_reason: Dict[str, List[str]] = {}
        for version, reason in failures:
            by_reason.setdefault(re.sub(r"^(error:|×)\s*", "", reason).rstrip("."), []).append(version)
        tried = "; ".join(f"python {', '.join(v)}: {r}" for r, v in by_reason.items()) or (
            "none is in the Python range asked for (`uv python install VERSION` or pyenv adds one)"
        )
        source = f" ({'offline, from ' + self.find_links})" if self.find_links else ""
        if need.source:
            then = (
                f"`neuropod envs build {need.source}` builds it (or list an interpreter that has it in "
                f"NEUROPOD_ENVIRONMENTS; `neuropod envs doctor {need.source}` says more)"
            )
        else:  # a requirement set given on the command line: there is no package path to name
            then = "the same `neuropod envs build` command builds it"
        text = (
            f"{where}no environment can run it: it needs {need.describe()}; found {need.found_here()} here, "
            f"no registered or built environment holds it, and none can be built with the Pythons found "
            f"({pythons}){source}: {tried}. Once that can be installed, {then}"
        )
        if need.distribution:
            raise FrameworkVersionError(text, range_text=need.framework_range.text, found=need.found_here())
        raise RequirementsError(text)

    # -- building ----------------------------------------------------------

    def build(self, plan: BuildPlan, progress: Optional[StepProgress] = None) -> Environment:
        """Build ``plan`` (or wait for the process already building it) and return the environment.

        Raises:
            EnvironmentBuildError: a step failed (names it; the log is kept at ``log_path``).
        """
        root = envs_dir()
        root.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(root / f".{plan.key}.lock"))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            logger.info("environment %s: another process is building it; waiting for it", plan.key)
            lock.acquire()
        try:
            existing = _load(plan.path)
            if existing is not None:
                return existing
            progress = progress or StepProgress(f"environment {plan.key}", logger)
            try:
                environment = self._build_locked(plan, progress)
            except BaseException:
                progress.close("failed")
                raise
            progress.close(f"built in {build_seconds(environment):.0f} s")
            return environment
        finally:
            lock.release()

    def _build_locked(self, plan: BuildPlan, progress: StepProgress) -> Environment:
        root = envs_dir()
        temporary = root / f".tmp-{plan.key}-{os.getpid()}"
        shutil.rmtree(temporary, ignore_errors=True)
        (root / "logs").mkdir(exist_ok=True)
        log_path = root / "logs" / f"{plan.key}-{time.strftime('%Y%m%dT%H%M%S')}.log"
        started = time.time()
        python = str(temporary / "bin" / "python")
        with open(log_path, "w") as log:
            log.write(f"plan: python {plan.interpreter.version} ({plan.interpreter.executable})\n")
            log.write("requirements:\n" + "".join(f"  {r}\n" for r in plan.requirements))
            try:
                progress.step("creating", f"python {plan.interpreter.version}")
                if self.uv:
                    self._run(
                        "creating",
                        [self.uv, "venv", "--relocatable", "--python", plan.interpreter.executable, str(temporary)],
                        log,
                        log_path,
                        progress,
                    )
                else:
                    self._run(
                        "creating", [plan.interpreter.executable, "-m", "venv", str(temporary)], log, log_path, progress
                    )
                progress.step("resolving", ", ".join(plan.requirements))
                if self.uv:
                    argv = [self.uv, "pip", "install", "--python", python, *self._index_args(), *plan.requirements]
                else:
                    argv = [
                        python,
                        "-m",
                        "pip",
                        "install",
                        "--progress-bar",
                        "off",
                        *self._index_args(),
                        *plan.requirements,
                    ]
                self._run("installing", argv, log, log_path, progress)
                progress.step("checking", "the framework and neuropod's worker import there")
                found = probe(python, use_cache=False)
                problems = plan.need.problems(found["python"], found["packages"])
                if problems:
                    self._fail("checking", f"the environment lacks {'; '.join(problems)}", log, log_path)
                self._run("checking", [python, "-c", "import numpy, neuropod.worker"], log, log_path, progress)
                meta = {
                    "python": found["python"],
                    "interpreter": plan.interpreter.executable,
                    "requirements": list(plan.requirements),
                    "packages": found["packages"],
                    "need": plan.need.describe(),
                    "worker": worker_version(),
                    "built_at": time.time(),
                    "build_seconds": round(time.time() - started, 1),
                    "offline_from": self.find_links or "",
                }
                (temporary / METADATA).write_text(json.dumps(meta, indent=2, sort_keys=True))
            except BaseException:
                shutil.rmtree(temporary, ignore_errors=True)
                raise
        shutil.move(str(log_path), str(temporary / "neuropod-build.log"))
        os.rename(temporary, plan.path)
        environment = _load(plan.path)
        assert environment is not None
        return environment

    def _run(self, step: str, argv: List[str], log: IO[str], log_path: Path, progress: StepProgress) -> None:
        log.write(f"\n$ {' '.join(argv)}\n")
        log.flush()
        env = _tool_env()
        env["PYTHONPATH"] = worker_code_root()
        process = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, stdin=subprocess.DEVNULL
        )
        assert process.stdout is not None
        tail: List[str] = []
        for line in process.stdout:
            log.write(line)
            tail = (tail + [line.strip()])[-5:] if line.strip() else tail
            self._report(line, progress)
        if process.wait() != 0:
            if step == "installing" and self.find_links:
                missing = _missing_wheels(self.find_links, [line for line in argv if "==" in line])
                if missing:
                    tail.append(f"no wheel in {self.find_links} for: {', '.join(missing)}")
            self._fail(step, " | ".join(tail[-3:]) or f"exit code {process.returncode}", log, log_path)

    @staticmethod
    def _report(line: str, progress: StepProgress) -> None:
        size = _SIZE.match(line)
        if size:
            progress.download(size.group(1), int(float(size.group(2)) * _UNITS[size.group(3)]))
            return
        done = _DONE.match(line)
        if done:
            progress.downloaded(done.group(1))
        elif line.startswith(("Resolved", "Collecting")):
            progress.step("downloading")
        elif line.startswith(("Prepared", "Installed", "Installing collected")):
            progress.step("installing")

    @staticmethod
    def _fail(step: str, why: str, log: IO[str], log_path: Path) -> None:
        log.write(f"\nFAILED at {step}: {why}\n")
        log.close()
        raise EnvironmentBuildError(
            f"building the environment failed at step '{step}': {why} (the log is kept at {log_path})",
            step=step,
            log_path=str(log_path),
        )


def _tool_env() -> dict:
    env = dict(os.environ)
    env.pop("VIRTUAL_ENV", None)  # uv would otherwise prefer the caller's venv
    env.pop("PYTHONPATH", None)
    return env


def _missing_wheels(folder: str, pins: List[str]) -> List[str]:
    names = [
        normalize_name(entry.split("-")[0]) + "==" + entry.split("-")[1]
        for entry in os.listdir(folder)
        if entry.endswith((".whl", ".tar.gz")) and entry.count("-") >= 1
    ]
    return [pin for pin in pins if normalize_name(pin.split("==")[0]) + "==" + pin.split("==")[1] not in names]


def _load(path: Path) -> Optional[Environment]:
    try:
        meta = json.loads((path / METADATA).read_text())
    except (OSError, ValueError):
        return None
    return Environment(str(path / "bin" / "python"), meta["python"], meta["packages"], path=str(path), key=path.name)


def build_seconds(environment: Environment) -> float:
    try:
        meta = json.loads(Path(environment.path, METADATA).read_text())
        return float(meta.get("build_seconds", 0.0))
    except (OSError, ValueError):
        return 0.0
