"""Fenced code blocks of a Markdown file, with the run markers the docs use.

Rules (written down in docs/contributing.md):

- In README.md every ``python`` block runs, top to bottom, in one namespace and
  one fresh directory, as a user pasting them in order would run them.
- In docs/*.md a block runs when the line before it is ``<!-- run -->``.
- ``<!-- norun: reason -->`` before a README block excludes it (a GPU, a
  second machine); the reason is required so exclusions stay honest.
- ``bash`` blocks run only when marked ``<!-- run -->``; ``<!-- run: server -->``
  runs one while the ``neuropod serve`` the runner started is up.
- ``<!-- extras: torch,serve -->`` on a line of its own names the extras of
  ``neuropod-python`` that every block after it needs, up to the next such
  line (``<!-- extras: -->`` for the core alone). The installed-package README
  test runs each stretch of blocks in a fresh venv holding the built wheel with
  exactly those extras.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

__all__ = ["Block", "read_blocks"]

_FENCE = re.compile(r"^(```+)\s*([\w+-]*)")
_MARKER = re.compile(r"^<!--\s*(run|norun)(?::\s*(.*?))?\s*-->\s*$")
_EXTRAS = re.compile(r"^<!--\s*extras:\s*([\w,\s-]*?)\s*-->\s*$")


@dataclass(frozen=True)
class Block:
    """One fenced block: its language, its text, where it starts, and its marker."""

    language: str
    text: str
    line: int
    marker: Optional[str]  # "run", "norun" or None
    argument: str  # what follows "run:" / "norun:"
    extras: Optional[Tuple[str, ...]] = None  # the extras the block needs; None: no extras line before it


def read_blocks(path: Path) -> List[Block]:
    blocks: List[Block] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    index = 0
    previous = ""
    extras: Optional[Tuple[str, ...]] = None
    while index < len(lines):
        match = _FENCE.match(lines[index])
        if not match:
            if lines[index].strip():
                previous = lines[index].strip()
                named = _EXTRAS.match(previous)
                if named:
                    extras = tuple(sorted(name.strip() for name in named.group(1).split(",") if name.strip()))
            index += 1
            continue
        fence, language = match.groups()
        start = index + 1
        index += 1
        body = []
        while index < len(lines) and not lines[index].startswith(fence):
            body.append(lines[index])
            index += 1
        index += 1  # the closing fence
        marker = _MARKER.match(previous)
        blocks.append(
            Block(
                language=language.lower(),
                text="\n".join(body) + "\n",
                line=start + 1,
                marker=marker.group(1) if marker else None,
                argument=(marker.group(2) or "") if marker else "",
                extras=extras,
            )
        )
        previous = ""
    return blocks
