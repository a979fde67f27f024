"""Fixtures the tools tests share (each test module imports them).

Real packages of the addition problem (TorchScript, ONNX and JAX, from the
conformance builders, plus a placeholder) and a real KServe v2 server on
loopback serving the Python adder of the serving tests.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Dict, Iterator

import pytest

TESTS = Path(__file__).resolve().parents[1]
for folder in ("conformance", "serving"):
    if str(TESTS / folder) not in sys.path:
        sys.path.insert(0, str(TESTS / folder))

from conftest import ADDITION_INPUTS, ADDITION_OUTPUTS, require  # noqa: E402

FRAMEWORKS = ("torchscript", "onnx", "jax")
_MODULES = {"torchscript": "torch", "onnx": "onnxruntime", "jax": "jax"}


@pytest.fixture(scope="session", name="addition")
def addition_fixture(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Path]:
    """The addition problem (out = x + y) packaged in TorchScript, ONNX and JAX, plus a placeholder."""
    for module in _MODULES.values():
        require(module)
    from builders_jax import BUILDERS as JAX
    from builders_onnx import BUILDERS as ONNX
    from builders_torch import BUILDERS as TORCH

    from neuropod.packagers import create_placeholder_neuropod

    root = tmp_path_factory.mktemp("addition")
    builders = {"torchscript": TORCH["torchscript"], "onnx": ONNX["onnx"], "jax": JAX["jax"]}
    packages = {name: builder.build(root / f"{name}.zip", "addition") for name, builder in builders.items()}
    packages["placeholder"] = create_placeholder_neuropod(
        root / "placeholder.zip", "addition", ADDITION_INPUTS, ADDITION_OUTPUTS, seed=3, free_dim_size=4
    )
    return packages


@pytest.fixture(scope="session", name="server_url")
def server_url_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``grpc://127.0.0.1:PORT/adder``: a Python adder served over KServe v2."""
    require("grpc")
    require("aiohttp")
    from serving_models import make_adder

    from neuropod.serving import ModelServer, ServerConfig

    root = tmp_path_factory.mktemp("repo")
    make_adder(root / "adder")
    with ModelServer.from_path(root, ServerConfig(grpc_port=0, http_port=0)) as server:
        yield f"grpc://127.0.0.1:{server.grpc_port}/adder"
