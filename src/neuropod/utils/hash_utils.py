"""The original's ``neuropod.utils.hash_utils``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union

from ..package.manifest import sha256_file

__all__ = ["sha256sum"]


def sha256sum(filename: Union[str, os.PathLike[str]]) -> str:
    """The sha256 of a file's bytes, as a hex string (what ``manifest.json`` records)."""
    return sha256_file(Path(filename))
