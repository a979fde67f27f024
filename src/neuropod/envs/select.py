"""Choosing where a package runs: this process, or a worker in another environment."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import List, Optional

from ..errors import OptionError
from ..package import Package
from ..versions import check_platform_version
from .build import Builder
from .need import Need, need_of
from .store import Environment, built_environments, probe, registered_environments

__all__ = ["select_environment", "find_environment", "ensure_environment", "environment_at"]

logger = logging.getLogger("neuropod.envs")


def environment_at(path: str) -> Environment:
    """The environment of a venv folder or an interpreter (probed).

    Raises:
        OptionError: ``path`` is neither.
    """
    candidate = Path(path).expanduser()
    python = candidate / "bin" / "python" if candidate.is_dir() else candidate
    if not (python.is_file() and os.access(python, os.X_OK)):
        raise OptionError(f"environment: {path!r} is neither a Python interpreter nor a venv folder with bin/python")
    found = probe(str(python))
    return Environment(str(python), found["python"], found["packages"], path=str(python.parent.parent))


def find_environment(need: Need) -> Optional[Environment]:
    """A registered or built environment that serves ``need`` (registered ones first), or None."""
    candidates: List[Environment] = registered_environments() + built_environments()
    return next((env for env in candidates if need.served_by(env)), None)


def ensure_environment(need: Need, builder: Optional[Builder] = None) -> Environment:
    """An environment serving ``need``: found, or built now (once, whatever the number of processes asking).

    Raises:
        FrameworkVersionError / RequirementsError: nothing can serve it.
        EnvironmentBuildError: building failed.
    """
    environment = find_environment(need)
    if environment is None:
        builder = builder or Builder()
        environment = builder.build(builder.plan(need))
    environment.touch()
    return environment


def select_environment(package: Package, environment: Optional[str] = None) -> Optional[str]:
    """The interpreter to run ``package``'s worker under, or None to load it in this process.

    Args:
        package: the opened package.
        environment: None (choose: this process when it satisfies the
            package, else a found or built environment), ``"current"`` (this
            process or an error) or a path (that venv or interpreter).

    Raises:
        FrameworkVersionError: ``"current"`` and this framework is outside the range,
            or nothing can satisfy the range.
    """
    config = package.config
    if environment == "current":
        check_platform_version(config.platform, config.platform_version_semver, where=str(package.source))
        return None
    need = need_of(package)
    if environment is not None:
        chosen = environment_at(os.fspath(environment))
        problems = need.problems(chosen.python_version, chosen.packages)
        if problems:
            logger.warning(
                "model %s: environment %s lacks %s; using it as asked", config.name, chosen.python, "; ".join(problems)
            )
        return chosen.python
    if not need.asks_for_anything:
        return None
    problems = need.problems_here()
    if not problems:
        return None
    chosen = ensure_environment(need)
    logger.info(
        "model %s runs in environment %s (%s): this process (python %s) lacks %s",
        config.name,
        chosen.path,
        chosen.describe((need.distribution,) if need.distribution else ()),
        ".".join(str(n) for n in sys.version_info[:3]),
        "; ".join(problems),
    )
    return chosen.python
