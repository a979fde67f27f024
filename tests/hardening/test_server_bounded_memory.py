"""Issue 25, finding 4: the REST server refuses what is too large without reading it into memory.

A body declared over the limit (``Content-Length``) is refused before it is
read; a gzip bomb (1 MiB that inflates to 1 GiB) is refused holding only its
compressed bytes. The server runs in a child interpreter under a hard
address-space limit, so a regression fails the test instead of taking the
machine's memory; its peak resident memory is read from ``/proc``.
"""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Iterator, Tuple

import pytest

from conftest import require

require("aiohttp")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serving"))
from serving_models import make_adder  # noqa: E402

SRC = str(Path(__file__).resolve().parents[2] / "src")
LIMIT = 256 << 20  # the server's default max_message_bytes

SERVER = """
import resource, sys
sys.path.insert(0, {src!r})
resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))  # a regression fails here, not in the machine
from neuropod.serving import ModelServer, ServerConfig
with ModelServer.from_path({package!r}, ServerConfig(http_port=0, max_message_bytes={limit})) as server:
    print(server.http_port, flush=True)
    sys.stdin.read()  # until the test closes it
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tuple[subprocess.Popen, int]]:
    package = make_adder(tmp_path_factory.mktemp("bounded") / "adder")
    script = SERVER.format(src=SRC, package=str(package), limit=LIMIT)
    child = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        port = int(child.stdout.readline())
        yield child, port
    finally:
        child.stdin.close()
        try:
            child.wait(30)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def _memory_kib(pid: int) -> Tuple[int, int]:
    """(resident now, peak resident) of ``pid``, in KiB."""
    fields = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            name, _, value = line.partition(":")
            fields[name] = value.split()[0] if value.split() else "0"
    return int(fields["VmRSS"]), int(fields["VmHWM"])


def _infer(port: int, body: bytes, headers: dict) -> Tuple[int, dict]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request("POST", "/v2/models/adder/infer", body=body, headers=headers)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def _document() -> bytes:
    inputs = [{"name": name, "datatype": "FP32", "shape": [1, 2], "data": [1.0, 2.0]} for name in ("x", "y")]
    return json.dumps({"inputs": inputs}).encode()


def _warm_up(port: int) -> None:
    for encoding in ("identity", "gzip"):
        body = _document() if encoding == "identity" else _gzip(_document())
        status, answer = _infer(port, body, {"Content-Encoding": encoding})
        assert status == 200, answer
        assert answer["outputs"][0]["data"] == [2.0, 4.0]


def _gzip(data: bytes) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    return packer.compress(data) + packer.flush()


def test_a_declared_content_length_over_the_limit_is_refused_before_the_body_is_read(server):
    child, port = server
    _warm_up(port)
    rss_before, peak_before = _memory_kib(child.pid)
    for _ in range(5):
        with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
            head = (
                "POST /v2/models/adder/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"Content-Length: {LIMIT + 1}\r\n\r\n"
            )
            conn.sendall(head.encode() + b"{" + b" " * (1 << 20))  # 1 MiB of the body, then we wait
            answer = conn.recv(65536).decode("latin-1")
        assert answer.startswith("HTTP/1.1 413"), answer[:200]
        assert f"Content-Length {LIMIT + 1} is larger than the server's limit of {LIMIT} bytes" in answer
    rss_after, peak_after = _memory_kib(child.pid)
    assert peak_after - peak_before < 8 * 1024, (peak_before, peak_after)  # it read about 1 MiB of each, not 256
    assert rss_after - rss_before < 5 * 1024, (rss_before, rss_after)  # <= 1 MiB per refused request
    _warm_up(port)


def test_a_gzip_bomb_is_refused_holding_only_its_compressed_bytes(server):
    child, port = server
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = bytes(1 << 20)
    bomb = b"".join(packer.compress(zeros) for _ in range(1024)) + packer.flush()  # 1 GiB inflated
    assert len(bomb) < 2 << 20
    _warm_up(port)
    rss_before, peak_before = _memory_kib(child.pid)
    for encoding, body in (("gzip", bomb), ("deflate", zlib.compress(bytes(LIMIT + 1), 9))):
        status, answer = _infer(port, body, {"Content-Encoding": encoding})
        assert status == 413, answer
        assert f"inflates ({encoding}) to more than the server's limit of {LIMIT} bytes" in answer["error"]
    rss_after, peak_after = _memory_kib(child.pid)
    assert peak_after - peak_before < 16 * 1024, (peak_before, peak_after)  # not the 256 MiB it would inflate
    assert rss_after - rss_before < 4 * 1024, (rss_before, rss_after)
    _warm_up(port)
