"""A worker keeps each ecosystem's settings (Hugging Face's too), from one documented table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from neuropod import load_neuropod
from neuropod.ope.environment import allow_list_table
from neuropod.packagers import create_python_neuropod

DOCS = Path(__file__).resolve().parents[2] / "docs" / "environments.md"

ENV_CODE = """
import os
import numpy as np

def get_model(data_dir):
    def run(x):
        return {"env": np.array([name + "=" + value for name, value in sorted(os.environ.items())])}
    return run
"""

HUGGING_FACE = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HOME": "/models/hf",
    "HUGGINGFACE_HUB_CACHE": "/models/hub",
    "TOKENIZERS_PARALLELISM": "false",
    "SENTENCE_TRANSFORMERS_HOME": "/models/st",
    "KERAS_HOME": "/models/keras",
    "TORCHINDUCTOR_CACHE_DIR": "/tmp/inductor",
}
SECRETS = {"HF_TOKEN": "hf_s3cret", "HUGGING_FACE_HUB_TOKEN": "hf_s3cret", "NEUROPOD_SERVE_TOKEN": "s3cret"}


@pytest.fixture(scope="module")
def env_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("ecosystems")
    (root / "src" / "envdump").mkdir(parents=True)
    (root / "src" / "envdump" / "__init__.py").write_text("")
    (root / "src" / "envdump" / "main.py").write_text(ENV_CODE)
    return create_python_neuropod(
        neuropod_path=root / "pkg",
        model_name="envdump",
        data_paths=[],
        code_path_spec=[{"python_root": str(root / "src"), "dirs_to_package": ["envdump"]}],
        entrypoint_package="envdump.main",
        entrypoint="get_model",
        input_spec=[{"name": "x", "dtype": "float32", "shape": [None]}],
        output_spec=[{"name": "env", "dtype": "string", "shape": [None]}],
        package_as_zip=False,
    )


def test_a_worker_keeps_hugging_face_settings_but_not_its_tokens(env_model, monkeypatch):
    for name, value in {**HUGGING_FACE, **SECRETS}.items():
        monkeypatch.setenv(name, value)
    with load_neuropod(env_model, use_ope=True) as model:
        lines = model.infer({"x": np.ones(1, np.float32)})["env"]
    env = dict(line.split("=", 1) for line in lines)
    assert {name: env.get(name) for name in HUGGING_FACE} == HUGGING_FACE
    assert not set(SECRETS) & set(env)


def test_the_documented_table_is_the_one_in_the_code():
    assert allow_list_table() in DOCS.read_text()
