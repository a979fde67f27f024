"""``neuropod serve --workers N``: N server processes sharing the ports (SO_REUSEPORT), so every core serves.

The supervisor (this module, in the process the operator started) runs N
``neuropod serve`` children with the same arguments and ``--reuse-port``;
the kernel spreads new connections over them. Ports given as 0 are chosen
once, here, and held (bound with SO_REUSEPORT, not listening) while the
children run, so every child gets the same ones.

The children's log lines pass through; their ``serving`` and ``all models
loaded`` lines are folded into one of each, logged when every child has
reached that point. A signal is forwarded to every child (the first drains,
a second stops at once, as with one process). A child that dies while the
server is not stopping is logged and started again. Each child is told its
index (``--worker-index``), which ``--pin-cpus`` uses to give worker i the
i-th CPU.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
from typing import Any, Dict, List, Optional, Sequence

__all__ = ["serve_workers", "child_arguments", "pin_to_cpu"]

logger = logging.getLogger("neuropod.serving")

_STRIPPED = {"--workers", "--grpc-port", "--http-port", "--worker-index"}


def pin_to_cpu(index: int) -> int:
    """Pin this process to one CPU: the ``index``-th (mod their count) of those it may run on; returns it.

    Call it before any thread starts: a thread keeps the CPUs it was created with. Keeping
    the server's threads (the gRPC poller, grpc's I/O threads) on one core saves the
    cross-core wake-ups and cache misses of every request handed between them.
    """
    allowed = sorted(os.sched_getaffinity(0))
    cpu = allowed[index % len(allowed)]
    os.sched_setaffinity(0, {cpu})
    return cpu


def child_arguments(argv: Sequence[str]) -> List[str]:
    """The ``serve`` arguments of this command line without --workers and the ports (given explicitly)."""
    args = list(argv)
    if "serve" in args:
        args = args[args.index("serve") + 1 :]
    kept: List[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in _STRIPPED:
            skip = "=" not in arg
            continue
        kept.append(arg)
    return kept


def _reserve(host: str, port: int) -> socket.socket:
    """A socket bound to ``port`` (0: a free one) with SO_REUSEPORT, so the children can bind it too."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


class _Supervisor:
    def __init__(self, command: List[str], workers: int) -> None:
        self.command = command
        self.workers = workers
        self.children: List[Optional[subprocess.Popen[str]]] = [None] * workers
        self.stopping = False
        self.lock = threading.Lock()
        self.serving: Dict[int, Dict[str, Any]] = {}
        self.loaded: Dict[int, Dict[str, Any]] = {}
        self.announced = {"serving": False, "loaded": False}

    def start(self, index: int) -> None:
        command = self.command + ["--worker-index", str(index)]
        child = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
        self.children[index] = child
        threading.Thread(target=self._relay, args=(index, child), daemon=True).start()

    def _relay(self, index: int, child: subprocess.Popen[str]) -> None:
        assert child.stderr is not None
        for line in child.stderr:
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            message = record.get("message") if isinstance(record, dict) else None
            if message == "serving":
                self._reached(self.serving, index, record, "serving")
            elif message == "all models loaded":
                self._reached(self.loaded, index, record, "loaded")
            else:
                sys.stderr.write(line)
                sys.stderr.flush()

    def _reached(self, table: Dict[int, Dict[str, Any]], index: int, record: Any, what: str) -> None:
        with self.lock:
            table[index] = record
            if len(table) < self.workers or self.announced[what]:
                return
            self.announced[what] = True
        fields = {k: v for k, v in record.items() if k not in ("time", "level", "logger", "message")}
        fields["workers"] = self.workers
        logger.info(record["message"], extra=fields)

    def signal_all(self, signum: int) -> None:
        self.stopping = True
        for child in self.children:
            if child is not None and child.poll() is None:
                child.send_signal(signum)

    def run(self) -> int:
        for index in range(self.workers):
            self.start(index)
        codes: Dict[int, int] = {}
        while len(codes) < self.workers:
            for index, child in enumerate(self.children):
                if index in codes or child is None:
                    continue
                try:
                    code = child.wait(0.2)
                except subprocess.TimeoutExpired:
                    continue
                if self.stopping or code == 2:  # stopping, or a user error every child would repeat
                    codes[index] = code
                    if code == 2 and not self.stopping:
                        self.signal_all(signal.SIGTERM)
                    continue
                logger.warning("server worker exited; starting another", extra={"worker": index, "exit_code": code})
                self.start(index)
        return max(codes.values(), default=0)


def serve_workers(argv: Sequence[str], workers: int, host: str, grpc_port: int, http_port: int) -> int:
    """Run ``workers`` server processes on shared ports until a signal; returns the exit code."""
    held = [_reserve(host, grpc_port), _reserve(host, http_port)]
    try:
        grpc_bound, http_bound = (int(sock.getsockname()[1]) for sock in held)
        command = [sys.executable, "-m", "neuropod", "serve", *child_arguments(argv)]
        command += ["--grpc-port", str(grpc_bound), "--http-port", str(http_bound), "--reuse-port"]
        supervisor = _Supervisor(command, workers)
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda number, frame: supervisor.signal_all(number))
        return supervisor.run()
    finally:
        for sock in held:
            sock.close()
