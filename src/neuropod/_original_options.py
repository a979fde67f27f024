"""What the original Neuropod's own ``load_neuropod`` keywords mean here.

The original took ``_always_use_native`` (its native executor or its
pure-Python one) and ``load_custom_ops`` (its pure-Python executors could
skip a package's custom ops). Both are declared in
:class:`neuropod.plan.PackageOptions`; this module applies them
to a load and says once in the log where a value has no exact meaning here.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Mapping, Set, Tuple

from .package import Package

__all__ = ["apply_original_options", "load_installed_backends", "log_once"]

logger = logging.getLogger("neuropod")

_logged: Set[Tuple[str, ...]] = set()


def log_once(key: Tuple[str, ...], message: str) -> None:
    """Log ``message`` at INFO level the first time ``key`` is seen in this process."""
    if key not in _logged:
        _logged.add(key)
        logger.info(message)


def apply_original_options(package: Package, given: Mapping[str, Any], use_ope: bool) -> Package:
    """The package to run, with the original's keywords in ``given`` applied.

    ``_always_use_native``: one implementation runs here whatever the value.
    ``load_custom_ops=False``: the package's custom ops are not loaded in this
    process (the caller has loaded them); a worker process has no other way to
    get them, so it loads them anyway.
    """
    if "_always_use_native" in given:
        log_once(
            ("_always_use_native",),
            "load_neuropod(_always_use_native=...): the original's switch between its native and pure-Python "
            "executors; this implementation has one executor per way of running, so the value changes nothing",
        )
    if given.get("load_custom_ops") is False and package.config.custom_ops:
        if use_ope:
            log_once(
                ("load_custom_ops", "worker"),
                "load_neuropod(load_custom_ops=False): the model runs in a worker process, which cannot see ops "
                "loaded in this one, so the worker loads the package's custom ops",
            )
        else:
            package = dataclasses.replace(package, config=dataclasses.replace(package.config, custom_ops=()))
    return package


def load_installed_backends() -> None:
    """The original 0.2.0's ``neuropod.loader.load_installed_backends``: nothing to do here.

    The original registered its installed native backend libraries up front.
    Backends here are Python classes found by platform name when a package is
    loaded (see :mod:`neuropod.backends`), so there is nothing to load ahead;
    the call is kept so that code written for the original runs unchanged.
    """
