"""Packages whose artifact tells the framework version the package itself does not state.

The original Neuropod wrote no ``platform_version_semver``, so an old package
reads as "any torch". A TorchScript file saved by torch ~1.0 is in the
*legacy* archive format (``<name>/model.json`` with the tensors beside it,
no ``data.pkl``), which torch 1.11 and later refuse ("Legacy model format is
not supported"). Such a file is recognised from its zip directory alone (no
torch import, no tensor read) and the package is taken to need torch <= 1.10,
so version selection runs it in an environment with an old torch.
"""

from __future__ import annotations

import logging
import zipfile
from typing import TYPE_CHECKING, Optional

from ..package import layout

if TYPE_CHECKING:
    from ..package import Package

__all__ = ["implied_range", "LEGACY_TORCHSCRIPT_RANGE", "is_legacy_torchscript_archive"]

logger = logging.getLogger("neuropod.envs")

#: The torch versions that still load the legacy TorchScript format (the last before 1.11 removed it).
LEGACY_TORCHSCRIPT_RANGE = "<=1.10.2"


def is_legacy_torchscript_archive(path: str) -> bool:
    """True when ``path`` is a TorchScript zip in the legacy (torch ~1.0) format.

    The new format (torch 1.4 and later) has ``<name>/data.pkl``; the legacy
    one has ``<name>/model.json`` instead. Anything unreadable is not legacy
    (the backend reports what is wrong with it).
    """
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile, ValueError, EOFError, NotImplementedError, RuntimeError):
        return False
    tops = {name.split("/", 1)[0] for name in names if "/" in name}
    if len(tops) != 1:
        return False
    (top,) = tops
    return f"{top}/model.json" in names and f"{top}/data.pkl" not in names


def implied_range(package: Package, log: bool = True) -> Optional[str]:
    """The framework range the artifact of ``package`` implies when its config states none, else None.

    ``log``: say why in a log line (once per load: the quick pre-check does not).
    """
    config = package.config
    if config.platform != "torchscript" or config.platform_version_semver.strip() not in ("*", "x", "X", ""):
        return None
    model = package.root / layout.DATA_DIR / layout.TORCHSCRIPT_MODEL
    if not model.is_file() or not is_legacy_torchscript_archive(str(model)):
        return None
    if log:
        logger.info(
            "model %s: %s is TorchScript in the legacy format of torch ~1.0, which torch 1.11 and later refuse; "
            "the package states no torch version, so it is taken to need torch %s",
            config.name,
            model,
            LEGACY_TORCHSCRIPT_RANGE,
        )
    return LEGACY_TORCHSCRIPT_RANGE
