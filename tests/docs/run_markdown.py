"""Run a Markdown file's runnable blocks in order, in the current directory.

``python tests/docs/run_markdown.py FILE [--all-python] [--lines=A-B]``: Python
blocks (those starting on lines A to B, with ``--lines``) share one namespace;
a failing block's traceback names ``FILE:line``. ``bash`` blocks
run with ``bash -euo pipefail``; ``<!-- run: background -->`` starts one in the
background (a server), waits for ``/v2/health/ready`` on port 8000, and stops it
when the file is done. See markdown_blocks.py for the markers.
"""

from __future__ import annotations

import linecache
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent))
from markdown_blocks import Block, read_blocks  # noqa: E402

_SHELLS = ("bash", "sh", "shell", "console")


def runnable(block: Block, all_python: bool) -> bool:
    if block.marker == "norun":
        if not block.argument:
            raise SystemExit(f"line {block.line}: '<!-- norun -->' needs a reason ('<!-- norun: why -->')")
        return False
    if block.language == "python":
        return all_python or block.marker == "run"
    return block.language in _SHELLS and block.marker == "run"


def wait_for_server(url: str, timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.3)
    raise SystemExit(f"the background server never answered {url}")


def main(argv: List[str]) -> int:
    path = Path(argv[0]).resolve()
    all_python = "--all-python" in argv
    first, last = 0, sys.maxsize
    for flag in argv[1:]:
        if flag.startswith("--lines="):
            first, last = (int(n) for n in flag.split("=", 1)[1].split("-"))
    namespace: Dict[str, Any] = {"__name__": "__main__"}
    background: List[subprocess.Popen] = []
    try:
        for block in read_blocks(path):
            if not runnable(block, all_python) or not first <= block.line <= last:
                continue
            where = f"{path.name}:{block.line}"
            print(f"--- {where} ({block.language})", flush=True)
            if block.language == "python":
                # Registered as a source file, so inspect (TorchScript, tracebacks) can read the block's lines.
                linecache.cache[where] = (len(block.text), None, block.text.splitlines(True), where)
                exec(compile(block.text, where, "exec"), namespace)  # noqa: S102 - the docs are ours
            elif block.argument == "background":
                background.append(subprocess.Popen(["bash", "-c", block.text], start_new_session=True))
                wait_for_server("http://127.0.0.1:8000/v2/health/ready")
            else:
                result = subprocess.run(["bash", "-euo", "pipefail", "-c", block.text])
                if result.returncode != 0:
                    print(f"{where}: shell block exited {result.returncode}", file=sys.stderr)
                    return 1
    finally:
        for process in background:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
