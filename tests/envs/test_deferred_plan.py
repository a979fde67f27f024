"""The server carries out a model's plan; a plan whose environment must be built first loads in the background."""

from __future__ import annotations

import json

import numpy as np
import pytest
from envs_helpers import use_envs_dir

from neuropod.errors import ModelNotReadyError
from neuropod.packagers import create_placeholder_neuropod
from neuropod.plan import IN_PROCESS, WORKER_POOL, make_plan
from neuropod.serving.deferred import load_for_serving
from neuropod.serving.repository import ModelRepository

SPEC = [{"name": "x", "dtype": "float32", "shape": ("batch", 2)}]


@pytest.fixture(autouse=True)
def _shared_envs(monkeypatch):
    use_envs_dir(monkeypatch)


def _asking_for_python(tmp_path, version):
    path = create_placeholder_neuropod(tmp_path / "old", "old", SPEC, SPEC, package_as_zip=False)
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "python_version": version}))
    (path / "manifest.json").unlink()  # the config changed after packaging
    return path


def test_a_plan_that_needs_an_environment_built_says_so_and_builds_nothing(tmp_path):
    plan = make_plan(_asking_for_python(tmp_path, "2.7"))
    assert plan.runs == WORKER_POOL and plan.environment_to_build is not None
    assert "python 2.7" in plan.environment_to_build.describe()
    assert "an environment to build for" in plan.describe()


def test_the_server_serves_it_not_ready_and_says_why_it_could_not_be_prepared(tmp_path):
    # Before: envs/deferred.py opened the package again and decided for itself whether it ran here.
    model = load_for_serving(make_plan(_asking_for_python(tmp_path, "2.7")))
    assert not model.executor.ready()
    assert model.executor.wait(60)
    with pytest.raises(ModelNotReadyError, match="could not be prepared: .*python"):
        model.infer({"x": np.zeros((1, 2), np.float32)})
    model.close()


def test_a_plan_that_runs_here_loads_at_once(tmp_path):
    path = create_placeholder_neuropod(tmp_path / "new", "new", SPEC, SPEC)
    plan = make_plan(path)
    assert plan.runs == IN_PROCESS
    with load_for_serving(plan) as model:
        assert model.executor.ready()
    repository = ModelRepository.from_path(path)
    try:
        (served,) = list(repository)
        assert served.ready() and served.infer({"x": np.ones((1, 2), np.float32)})["x"].shape == (1, 2)
    finally:
        repository.close()
