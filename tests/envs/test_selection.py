"""Version selection at load, against real interpreters, real indexes and real framework versions."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import numpy as np
import pytest
from envs_helpers import use_envs_dir

from conftest import require
from neuropod import load_neuropod
from neuropod.errors import FrameworkVersionError, OptionError, RequirementsError
from neuropod.packagers import create_python_neuropod


@pytest.fixture(autouse=True)
def _shared_envs(monkeypatch):
    use_envs_dir(monkeypatch)


VERSION_SPEC = [{"name": "version", "dtype": "string", "shape": [1]}]
SIX_MODEL = """
    import numpy as np
    import six

    def get_model(data_root):
        def model(x):
            return {"version": np.array([six.__version__])}
        return model
"""


def _six_package(tmp_path: Path, pin: str, **options) -> Path:
    code = tmp_path / f"src-{pin}" / "six_reporter"
    code.mkdir(parents=True)
    (code / "__init__.py").write_text("")
    (code / "main.py").write_text(textwrap.dedent(SIX_MODEL))
    return create_python_neuropod(
        neuropod_path=tmp_path / f"six-{pin}",
        model_name=f"six_{pin.replace('.', '_')}",
        data_paths=[],
        code_path_spec=[{"python_root": str(code.parent), "dirs_to_package": ["six_reporter"]}],
        entrypoint_package="six_reporter.main",
        entrypoint="get_model",
        input_spec=[{"name": "x", "dtype": "float32", "shape": [1]}],
        output_spec=VERSION_SPEC,
        requirements=[f"six=={pin}"],
        **options,
    )


def test_python_packages_with_conflicting_pins_each_see_their_own(tmp_path, caplog):
    from importlib import metadata

    def six_here():
        try:
            return metadata.version("six")
        except metadata.PackageNotFoundError:
            return None

    before = six_here()
    assert before not in ("1.16.0", "1.15.0"), "this test needs a six here that neither package pins"
    new, old = _six_package(tmp_path, "1.16.0"), _six_package(tmp_path, "1.15.0")
    x = {"x": np.zeros(1, np.float32)}
    caplog.set_level("INFO", logger="neuropod.envs")
    with load_neuropod(new) as first, load_neuropod(old) as second:
        # A log line says which environment and why.
        assert any(
            "model six_1_16_0 runs in environment" in r.message and "lacks six==1.16.0" in r.message
            for r in caplog.records
        ), [r.message for r in caplog.records]
        for _ in range(2):  # alternately
            assert first.infer(x)["version"].tolist() == ["1.16.0"]
            assert second.infer(x)["version"].tolist() == ["1.15.0"]
        assert first.executor.options.python_executable != second.executor.options.python_executable
    assert six_here() == before  # nothing was installed into the caller's environment


def test_current_environment_refuses_unmet_requirements(tmp_path):
    with pytest.raises(RequirementsError, match=r"six==1\.15\.0"):
        load_neuropod(_six_package(tmp_path, "1.15.0"), environment="current")


def test_use_ope_false_insists_on_this_process(tmp_path):
    package = _six_package(tmp_path, "1.15.0")
    # Refused, not quietly run in a worker of another environment.
    with pytest.raises(RequirementsError, match=r"six==1\.15\.0"):
        load_neuropod(package, use_ope=False)
    with pytest.raises(OptionError, match=r"use_ope=False runs the model in this process, but environment='/venv'"):
        load_neuropod(package, use_ope=False, environment="/venv")


def _torchscript_package(tmp_path: Path, version_range: str) -> Path:
    torch = require("torch")
    from neuropod.packagers import create_torchscript_neuropod

    class Add(torch.nn.Module):
        def forward(self, x, y):
            return {"out": x + y}

    spec = [{"name": n, "dtype": "float32", "shape": [None, None]} for n in ("x", "y")]
    return create_torchscript_neuropod(
        neuropod_path=tmp_path / f"add-{version_range}",
        model_name="add",
        module=torch.jit.script(Add()),
        input_spec=spec,
        output_spec=[{"name": "out", "dtype": "float32", "shape": [None, None]}],
        platform_version_semver=version_range,
    )


def test_unsatisfiable_range_names_range_found_and_build_command(tmp_path):
    torch = require("torch")
    path = _torchscript_package(tmp_path, "0.0.1")
    with pytest.raises(FrameworkVersionError) as info:
        load_neuropod(path)
    message = str(info.value)
    assert "torch 0.0.1" in message
    assert f"found torch {torch.__version__}" in message
    assert f"neuropod envs build {path}" in message
    assert info.value.range_text == "0.0.1"


def test_current_environment_refuses_a_range_outside_this_framework(tmp_path):
    torch = require("torch")
    path = _torchscript_package(tmp_path, "1.10.2")
    with pytest.raises(
        FrameworkVersionError, match=re.escape(f"'1.10.2' is not satisfied by torch {torch.__version__}")
    ):
        load_neuropod(path, environment="current")


def test_a_satisfied_range_loads_in_this_process(tmp_path):
    torch = require("torch")
    major = torch.__version__.split(".")[0]
    with load_neuropod(_torchscript_package(tmp_path, f"^{major}.0")) as model:
        assert type(model.executor).__name__ == "InProcessExecutor"


def test_python_version_field_selects_the_python(tmp_path):
    from neuropod.package.manifest import write_manifest

    path = _six_package(tmp_path, "1.16.0", package_as_zip=False)
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "python_version": "3.10"}))
    write_manifest(path)
    with load_neuropod(path) as model:
        (worker,) = model.executor.workers
        assert worker.python_version.startswith("3.10.")
        assert model.infer({"x": np.zeros(1, np.float32)})["version"].tolist() == ["1.16.0"]


def test_doctor_says_what_serves_a_package_and_what_it_lacks_here(tmp_path):
    from click.testing import CliRunner

    from neuropod.cli import main

    path = _six_package(tmp_path, "1.15.0")
    with load_neuropod(path):
        pass  # builds (or finds) its environment
    result = CliRunner().invoke(main, ["envs", "doctor", str(path)])
    assert result.exit_code == 0, result.output
    assert "needs:        six==1.15.0" in result.output
    assert "lacks six==1.15.0" in result.output
    assert "served by:" in result.output
    built = CliRunner().invoke(main, ["envs", "build", str(path)])
    assert built.exit_code == 0 and "already served by" in built.output
    here = CliRunner().invoke(main, ["envs", "build", str(_torchscript_package(tmp_path, "*"))])
    assert here.exit_code == 0 and "nothing to build" in here.output


def test_environment_path_must_be_an_interpreter_or_venv(tmp_path):
    from neuropod.errors import OptionError

    with pytest.raises(OptionError, match="neither a Python interpreter nor a venv folder"):
        load_neuropod(_six_package(tmp_path, "1.16.0"), environment=str(tmp_path / "nowhere"))
