"""Whether installed distributions satisfy a package's pinned requirements.

Versions are compared by the standard version rules (PEP 440, through the
maintained ``packaging`` library), not as strings: ``torch==2.13.0`` is met by
``2.13.0+cpu`` (a local version label), ``numpy==2.0`` by ``2.0.0``, and
``1!2.0`` is not ``2.0`` (an epoch).

``packaging`` is imported on first use: a worker that loads no Python
package with requirements never needs it.
"""

from __future__ import annotations

from typing import Callable, Iterable, List, Optional

__all__ = ["requirement_problems", "installed_distribution_version"]


def installed_distribution_version(name: str) -> Optional[str]:
    """The version of distribution ``name`` installed in this process's environment, or None."""
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def requirement_problems(lines: Iterable[str], version_of: Callable[[str], Optional[str]]) -> List[str]:
    """What the installed distributions lack to meet ``lines`` ([] = every requirement is met).

    Args:
        lines: requirement lines (``name==version``, or any PEP 508 specifier).
        version_of: distribution name -> its installed version (None: not installed).

    Returns:
        one ``"<line> (not installed | found <version>)"`` per unmet requirement.

    Raises:
        ValueError: a line is not a requirement (its text is named).
    """
    lines = list(lines)
    if not lines:  # the common case needs no packaging: a worker under another Python may not have it
        return []
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.version import InvalidVersion, Version

    problems = []
    for line in lines:
        try:
            requirement = Requirement(line)
        except InvalidRequirement as exc:
            raise ValueError(f"requirements: {line!r} is not a requirement ({exc})") from None
        found = version_of(requirement.name)
        if found is None:
            problems.append(f"{line} (not installed)")
            continue
        try:
            # An installed pre-release meets a specifier it falls in: it is what is there.
            met = requirement.specifier.contains(Version(found), prereleases=True)
        except InvalidVersion:
            met = False
        if not met:
            problems.append(f"{line} (found {found})")
    return problems
