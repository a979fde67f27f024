"""Building, caching, locking, offline mode and the ``neuropod envs`` commands (small real builds)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from envs_helpers import use_envs_dir

from neuropod.cli import main
from neuropod.envs.build import Builder
from neuropod.envs.need import Need, range_to_specifiers
from neuropod.envs.select import ensure_environment
from neuropod.envs.store import METADATA, built_environments
from neuropod.errors import EnvironmentBuildError, RequirementsError
from neuropod.versions import VersionRange


@pytest.fixture(autouse=True)
def _shared_envs(monkeypatch):
    use_envs_dir(monkeypatch)


@pytest.fixture
def empty_envs_dir(tmp_path, monkeypatch):
    return use_envs_dir(monkeypatch, tmp_path / "envs")


SIX = Need(
    source="",
    platform="python",
    distribution=None,
    framework_range=VersionRange.parse("*"),
    requirements=("six==1.16.0",),
)


@pytest.mark.parametrize(
    "text, specifiers",
    [
        ("1.10.2", ["==1.10.2"]),
        ("^2.1", [">=2.1.0,<3.0.0"]),
        ("~1.17", [">=1.17.0,<1.18.0"]),
        ("1.4.0 - 1.6.0", [">=1.4.0,<=1.6.0"]),
        ("<1.11 || >=2.1", [">=2.1.0", "<1.11.0"]),
        ("*", [""]),
    ],
)
def test_npm_ranges_become_pip_specifiers_highest_alternative_first(text, specifiers):
    assert range_to_specifiers(VersionRange.parse(text)) == specifiers


def test_half_built_and_unlabelled_folders_are_never_used(empty_envs_dir):
    for name in (".tmp-abc-1", "no-metadata"):
        (empty_envs_dir / name / "bin").mkdir(parents=True)
    (empty_envs_dir / ".tmp-abc-1" / METADATA).write_text(json.dumps({"python": "3.11.7", "packages": {}}))
    assert built_environments() == []


_BUILD_IN_CHILD = """
import json, sys
from neuropod.envs.need import Need
from neuropod.envs.select import ensure_environment
from neuropod.versions import VersionRange
need = Need(source="", platform="python", distribution=None, framework_range=VersionRange.parse("*"),
            requirements=("six==1.16.0",))
print(json.dumps(ensure_environment(need).path))
"""


def test_concurrent_builders_of_one_need_build_it_once(empty_envs_dir):
    children = [
        subprocess.Popen([sys.executable, "-c", _BUILD_IN_CHILD], stdout=subprocess.PIPE, text=True) for _ in range(2)
    ]
    paths = {json.loads(child.communicate(timeout=300)[0]) for child in children}
    assert all(child.returncode == 0 for child in children)
    (path,) = paths  # both got the same environment ...
    folders = [p.name for p in empty_envs_dir.iterdir() if p.is_dir() and p.name != "logs"]
    assert folders == [Path(path).name]  # ... built once, with no half-built leftovers
    assert (Path(path) / "neuropod-build.log").is_file()
    assert list((empty_envs_dir / "logs").iterdir()) == []  # the log moved into the environment


def test_a_failed_build_names_its_step_and_keeps_its_log(empty_envs_dir, tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    builder = Builder(find_links=str(wheels))
    plan = Builder().plan(SIX)  # resolvable online ...
    offline_plan = type(plan)(plan.need, plan.interpreter, plan.requirements, "offline-test")
    with pytest.raises(EnvironmentBuildError) as info:
        builder.build(offline_plan)  # ... but not from an empty wheel folder
    assert info.value.step == "installing"
    assert f"no wheel in {wheels} for: six==1.16.0" in str(info.value)
    log = Path(info.value.log_path)
    assert log.is_file() and str(log) in str(info.value) and "FAILED at installing" in log.read_text()
    assert not (empty_envs_dir / "offline-test").exists()
    assert not list(empty_envs_dir.glob(".tmp-*"))


def test_offline_mode_installs_only_from_the_wheel_folder(empty_envs_dir, tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "-q",
            "--only-binary=:all:",
            "-d",
            str(wheels),
            "six==1.16.0",
            f"numpy=={np.__version__}",
            "packaging",  # the worker checks the requirements with it
        ],
        check=True,
    )
    need = Need(
        source="",
        platform="python",
        distribution=None,
        framework_range=VersionRange.parse("*"),
        requirements=("six==1.16.0",),
    )
    environment = ensure_environment(need, Builder(find_links=str(wheels)))
    assert environment.version_of("six") == "1.16.0"
    assert json.loads(Path(environment.path, METADATA).read_text())["offline_from"] == str(wheels)
    missing = Need(
        source="",
        platform="python",
        distribution=None,
        framework_range=VersionRange.parse("*"),
        requirements=("six==1.15.0",),
    )
    with pytest.raises(RequirementsError, match=rf"offline, from {wheels}") as info:
        Builder(find_links=str(wheels)).plan(missing)
    # A requirement set has no package path: the hint names no empty command.
    assert str(info.value).endswith("the same `neuropod envs build` command builds it")
    assert "doctor" not in str(info.value)


def test_cli_build_list_doctor_prune(empty_envs_dir, tmp_path):
    runner = CliRunner()
    lock = tmp_path / "requirements.lock"
    lock.write_text("six==1.16.0\n")
    built = runner.invoke(main, ["envs", "build", "-r", str(lock)])
    assert built.exit_code == 0, built.output
    again = runner.invoke(main, ["envs", "build", "-r", str(lock)])
    assert "already served by" in again.output
    listed = runner.invoke(main, ["envs", "list", "--json"])
    (row,) = json.loads(listed.output)["environments"]
    assert "six==1.16.0" in row["holds"] and row["bytes"] > 0 and row["last_used"]

    doctor = runner.invoke(main, ["envs", "doctor", str(tmp_path / "nope")])
    assert doctor.exit_code == 2 and "Traceback" not in doctor.output

    kept = runner.invoke(main, ["envs", "prune", "--older-than", "30d"])
    assert "freed 0 B in 0 environment(s)" in kept.output and Path(row["path"]).is_dir()
    pruned = runner.invoke(main, ["envs", "prune", "--older-than", "0"])
    assert pruned.exit_code == 0 and "in 1 environment(s)" in pruned.output
    assert not Path(row["path"]).exists()
    bad = runner.invoke(main, ["envs", "prune", "--older-than", "soon"])
    assert bad.exit_code == 2


def test_a_requirements_line_that_is_no_requirement_is_named(empty_envs_dir, tmp_path):
    lock = tmp_path / "requirements.txt"
    lock.write_text("six==1.16.0  # why\nrequests[socks] >=2.0, <3 ; python_version > '3'\n\n# note\nsix 1.16\n")
    result = CliRunner().invoke(main, ["envs", "build", "-r", str(lock)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert f"{lock} line 5: 'six 1.16' is not a requirement (expected name==version" in result.output
    assert not built_environments()


def test_without_uv_pip_and_venv_build_it(empty_envs_dir, monkeypatch):
    monkeypatch.setenv("NEUROPOD_UV", "0")
    need = Need(
        source="",
        platform="python",
        distribution=None,
        framework_range=VersionRange.parse("*"),
        python_ranges=(VersionRange.parse(f"{sys.version_info[0]}.{sys.version_info[1]}"),),
        requirements=("six==1.15.0",),
    )
    builder = Builder()
    assert builder.uv is None
    environment = ensure_environment(need, builder)
    assert environment.version_of("six") == "1.15.0" and environment.version_of("numpy")
    log = (Path(environment.path) / "neuropod-build.log").read_text()
    assert "-m venv" in log and "-m pip install" in log


def test_a_registered_environment_is_used_before_building(empty_envs_dir, tmp_path, monkeypatch):
    use_envs_dir(monkeypatch)  # the shared folder: build (or find) a six 1.16 environment there
    shared = ensure_environment(SIX)
    use_envs_dir(monkeypatch, empty_envs_dir)
    monkeypatch.setenv("NEUROPOD_ENVIRONMENTS", shared.path)  # ... and register it for an empty cache
    found = ensure_environment(SIX)
    assert found.python == str(Path(shared.path) / "bin" / "python") and not found.built
    assert built_environments() == []  # nothing was built


def test_the_worker_needs_only_numpy_of_neuropods_dependencies():
    """Environments hold numpy and the framework only (plus packaging where requirements are checked).

    The worker must not import neuropod's other dependencies.
    """
    check = (
        "import sys, neuropod, neuropod.worker, neuropod.envs, neuropod.backends.python.backend\n"
        "pulled = {'semantic_version', 'filelock', 'click', 'rich', 'packaging'} & set(sys.modules)\n"
        "assert not pulled, pulled\n"
    )
    subprocess.run([sys.executable, "-c", check], check=True)


def test_a_python_with_wheels_for_every_pin_wins_over_a_source_build():
    """scikit-learn 0.22.0 resolves under Python 3.11 too (from its sdist, which does not build there), but has
    wheels only up to CPython 3.8: the plan takes the Python its wheels are for (the original's test_python_deps)."""
    old_pin = Need(
        source="",
        platform="python",
        distribution=None,
        framework_range=VersionRange.parse("*"),
        requirements=("scikit-learn==0.22.0",),
    )
    plan = Builder().plan(old_pin)
    assert tuple(int(part) for part in plan.interpreter.version.split(".")[:2]) <= (3, 8), plan.interpreter
    assert "scikit-learn==0.22.0" in plan.requirements
