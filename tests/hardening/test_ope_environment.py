"""Issue 13 item 9: an OPE worker's environment is an allow-list, not the parent's secrets."""

from __future__ import annotations

import json

import numpy as np
import pytest

from neuropod import load_neuropod
from neuropod.errors import OptionError
from neuropod.ope.environment import worker_environment
from neuropod.packagers import create_python_neuropod

ENV_CODE = """
import os
import numpy as np

def get_model(data_dir):
    def run(x):
        return {"env": np.array([name + "=" + value for name, value in sorted(os.environ.items())])}
    return run
"""


@pytest.fixture(scope="module")
def env_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("envmodel")
    (root / "src" / "envmodel").mkdir(parents=True)
    (root / "src" / "envmodel" / "__init__.py").write_text("")
    (root / "src" / "envmodel" / "main.py").write_text(ENV_CODE)
    path = create_python_neuropod(
        neuropod_path=root / "pkg",
        model_name="env",
        data_paths=[],
        code_path_spec=[{"python_root": str(root / "src"), "dirs_to_package": ["envmodel"]}],
        entrypoint_package="envmodel.main",
        entrypoint="get_model",
        input_spec=[{"name": "x", "dtype": "float32", "shape": [None]}],
        output_spec=[{"name": "env", "dtype": "string", "shape": [None]}],
        package_as_zip=False,
    )
    return path


def _worker_env(path, **options) -> dict:
    with load_neuropod(path, use_ope=True, **options) as model:
        lines = model.infer({"x": np.ones(1, np.float32)})["env"]
    return dict(line.split("=", 1) for line in lines)


SECRETS = {"NEUROPOD_SERVE_TOKEN": "s3cret", "AWS_SECRET_ACCESS_KEY": "k", "MY_API_KEY": "k", "DB_PASSWORD": "p"}
NEEDED = {"OMP_NUM_THREADS": "3", "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "2", "LC_ALL": "C.UTF-8"}


def test_a_worker_sees_what_frameworks_need_and_no_secret(env_model, monkeypatch):
    for name, value in {**SECRETS, **NEEDED, "UNRELATED_SETTING": "1"}.items():
        monkeypatch.setenv(name, value)
    env = _worker_env(env_model)
    assert not set(SECRETS) & set(env), env
    assert "UNRELATED_SETTING" not in env
    for name, value in NEEDED.items():
        assert env[name] == value
    assert env["PATH"] and env["HOME"] and env["PYTHONPATH"]


def test_the_caller_and_the_package_can_pass_names(env_model, monkeypatch, tmp_path):
    monkeypatch.setenv("UNRELATED_SETTING", "1")
    monkeypatch.setenv("NEUROPOD_SERVE_TOKEN", "s3cret")
    monkeypatch.setenv("PACKAGE_SETTING", "2")
    env = _worker_env(env_model, pass_env=["UNRELATED_SETTING", "NEUROPOD_SERVE_TOKEN"], worker_env={"SET": "x"})
    assert env["UNRELATED_SETTING"] == "1" and env["NEUROPOD_SERVE_TOKEN"] == "s3cret" and env["SET"] == "x"
    assert _worker_env(env_model, pass_env="*")["PACKAGE_SETTING"] == "2"
    # A package's own declaration: its names, but never a secret-looking one.
    import shutil

    declared = tmp_path / "declared"
    shutil.copytree(env_model, declared)
    config = json.loads((declared / "config.json").read_text())
    (declared / "config.json").write_text(
        json.dumps({**config, "pass_env": ["PACKAGE_SETTING", "NEUROPOD_SERVE_TOKEN"]})
    )
    env = _worker_env(declared, verify_manifest=False)
    assert env["PACKAGE_SETTING"] == "2" and "NEUROPOD_SERVE_TOKEN" not in env


@pytest.mark.parametrize("value", ["NAME", [1], 5])
def test_pass_env_values_are_checked(env_model, value):
    with pytest.raises(OptionError, match="pass_env: expected a list of variable names"):
        load_neuropod(env_model, use_ope=True, pass_env=value)


def test_the_allow_list_itself():
    parent = {"PATH": "/bin", "HOME": "/h", "GITHUB_TOKEN": "t", "TORCH_HOME": "/t", "TORCH_AUTH": "a", "X": "1"}
    assert worker_environment(parent) == {"PATH": "/bin", "HOME": "/h", "TORCH_HOME": "/t"}
    assert worker_environment(parent, declared=["X", "GITHUB_TOKEN"])["X"] == "1"
    assert "GITHUB_TOKEN" not in worker_environment(parent, declared=["GITHUB_TOKEN"])
    assert worker_environment(parent, passed="*") == parent
