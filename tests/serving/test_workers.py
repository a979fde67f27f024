"""``neuropod serve --workers N``: several processes share the ports and all of them serve."""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path

from serving_models import assert_stops_cleanly, make_adder, serve_cli

from conftest import require

require("grpc")
require("aiohttp")

BODY = json.dumps(
    {"inputs": [{"name": n, "datatype": "FP32", "shape": [1, 2], "data": [1, 2]} for n in ("x", "y")]}
).encode()


def _served_count(port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    found = re.findall(r'^neuropod_inference_requests_total\{[^}]*protocol="rest"[^}]*\} (\S+)$', text, re.M)
    return sum(float(value) for value in found)


def test_two_workers_share_the_ports_and_both_serve(tmp_path: Path) -> None:
    make_adder(tmp_path / "adder")
    with serve_cli(str(tmp_path / "adder"), "--workers", "2", "--grpc-port", "0", "--http-port", "0") as process:
        assert process.stderr is not None
        serving = None
        for line in process.stderr:
            record = json.loads(line)
            if record["message"] == "serving":
                serving = record
            if record["message"] == "all models loaded":
                assert record["workers"] == 2 and serving is not None
                break
        assert serving is not None and serving["workers"] == 2
        port = serving["http_port"]
        for _ in range(100):  # each on a new connection: the kernel spreads them over the workers
            request = urllib.request.Request(f"http://127.0.0.1:{port}/v2/models/adder/infer", data=BODY)
            with urllib.request.urlopen(request, timeout=10) as response:
                assert json.loads(response.read())["outputs"][0]["data"] == [2.0, 4.0]
        seen = {_served_count(port) for _ in range(40)}  # each process counts only what it served
        # Two counts that add up to 100, or one of 50 when the kernel happened to split them evenly.
        assert (len(seen) == 2 and sum(seen) == 100 and min(seen) > 0) or seen == {50.0}, seen
        assert_stops_cleanly(process)
