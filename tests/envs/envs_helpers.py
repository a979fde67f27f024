"""Shared by the environment tests.

Environments built by these tests live in one folder per checkout
(``.cache/envs``): CI starts from a fresh clone, so each CI run builds them
once and reuses them across its tests; a developer's later runs reuse them too.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from conftest import require

REPO = Path(__file__).resolve().parent.parent.parent
SHARED_ENVS = Path(os.environ.get("NEUROPOD_TEST_ENVS_DIR") or REPO / ".cache" / "envs")


def use_envs_dir(monkeypatch: pytest.MonkeyPatch, folder: Path = SHARED_ENVS) -> Path:
    """Build and find environments in ``folder`` only (no registered ones, no offline folder)."""
    monkeypatch.setenv("NEUROPOD_ENVS_DIR", str(folder))
    monkeypatch.delenv("NEUROPOD_ENVIRONMENTS", raising=False)
    monkeypatch.delenv("NEUROPOD_ENVS_FIND_LINKS", raising=False)
    return folder


def onnx_addition_package(tmp_path: Path, name: str, version_range: str) -> Path:
    """An ONNX x + y package asking for onnxruntime ``version_range``."""
    require("onnxruntime")
    from onnx import TensorProto, helper

    from neuropod.packagers import create_onnx_neuropod

    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "y"], ["out"])],
        "add",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", "n"]) for n in ("x", "y")],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", "n"])],
    )
    # IR 8 / opset 17: what onnxruntime 1.17 reads.
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    spec = [{"name": n, "dtype": "float32", "shape": ["batch", "n"]} for n in ("x", "y")]
    return create_onnx_neuropod(
        neuropod_path=tmp_path / name,
        model_name=name,
        model=model,
        input_spec=spec,
        output_spec=[{"name": "out", "dtype": "float32", "shape": ["batch", "n"]}],
        platform_version_semver=version_range,
    )
