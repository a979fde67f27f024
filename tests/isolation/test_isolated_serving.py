"""A server runs one model sandboxed next to one in-process, and the sandboxed one's attacks fail."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hostile import INPUTS, OUTPUTS, make_hostile_model  # noqa: E402

from conftest import require, require_command  # noqa: E402
from neuropod.loader import load_neuropod  # noqa: E402
from neuropod.packagers import create_placeholder_neuropod  # noqa: E402


def test_a_server_runs_a_sandboxed_model_next_to_an_in_process_one(tmp_path):
    require_command("bwrap")
    require("grpc")
    from neuropod.serving import ModelServer, ModelSettings, ServerConfig

    repo = tmp_path / "repo"
    repo.mkdir()
    make_hostile_model(tmp_path, package_as_zip=False)
    (tmp_path / "hostile").rename(repo / "hostile")
    create_placeholder_neuropod(repo / "plain", "plain", INPUTS, OUTPUTS, package_as_zip=False)
    settings = {"hostile": ModelSettings(isolation="sandbox", load_options={"max_processes": 64})}
    with ModelServer.from_path(repo, ServerConfig(grpc_port=0, http_port=0), model_settings=settings) as server:
        hostile = server.repository.get("hostile").neuropod
        plain = server.repository.get("plain").neuropod
        assert hostile.executor.isolation.level == "sandbox"
        assert type(plain.executor).__name__ == "InProcessExecutor"
        request = {"attack": np.array(["read"]), "arg": np.array(["/etc/shadow"])}
        with load_neuropod(f"http://127.0.0.1:{server.http_port}/hostile") as remote:
            assert str(remote.infer(request)["result"][0]).startswith("BLOCKED FileNotFoundError")
            fork_bomb = {"attack": np.array(["fork_bomb"]), "arg": np.array(["500"])}
            assert str(remote.infer(fork_bomb)["result"][0]).startswith("BLOCKED OSError: fork failed")
        with load_neuropod(f"grpc://127.0.0.1:{server.grpc_port}/plain") as remote:
            assert remote.infer(request)["result"].shape == (1,)  # the in-process model serves on
