"""What a package needs from an environment, and whether an environment has it.

A package's need is its framework's version range (``platform_version_semver``),
the Python versions it accepts (for ``python`` packages: that range, and the
optional ``python_version`` field of ``config.json``) and its pinned
``0/requirements.lock``.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Tuple

import semantic_version
from packaging.requirements import Requirement

from ..package import Package, layout
from ..requirements import requirement_problems
from ..versions import VersionRange, framework_distributions, framework_of, installed_version, parse_version
from .store import Environment, normalize_name

__all__ = ["Need", "need_of", "range_to_specifiers", "ERA_PINS"]

#: Requirements an old framework release needs but does not declare: a
#: resolver today would pick numpy 2 (which those wheels were not built
#: against) and a setuptools without ``pkg_resources.packaging`` (torch < 2.1
#: imports it). ``(distribution, first release that does not need them, pins)``.
ERA_PINS: Tuple[Tuple[str, str, Tuple[str, ...]], ...] = (
    ("torch", "2.3.0", ("numpy<2",)),
    ("torch", "2.1.0", ("setuptools<70",)),
    ("tensorflow", "2.18.0", ("numpy<2",)),
    ("tensorflow", "2.0.0", ("protobuf<3.21",)),  # TF 1.x's generated code predates protobuf 4
    ("onnxruntime", "1.19.0", ("numpy<2",)),
    ("jax", "0.4.26", ("numpy<2",)),
    ("keras", "3.0.0", ("numpy<2",)),
    # Not of an era: every jax's ``jax.export`` deserialiser (the jax backend's loader) imports
    # flatbuffers, and up to 0.5 absl, which jax does not declare.
    ("jax", "999.0.0", ("flatbuffers", "absl-py")),
)


def range_to_specifiers(version_range: VersionRange) -> List[str]:
    """The PEP 440 specifiers an npm range stands for: one per ``||`` alternative, highest first.

    ``^2.1`` -> ``[">=2.1.0,<3.0.0"]``; ``*`` -> ``[""]`` (any version).
    """
    clause = version_range._spec.clause
    alternatives = clause.clauses if isinstance(clause, semantic_version.base.AnyOf) else [clause]
    specifiers = []
    for alternative in alternatives:
        ranges = alternative.clauses if isinstance(alternative, semantic_version.base.AllOf) else [alternative]
        parts = [
            f"{r.operator}{r.target}"
            for r in sorted(ranges, key=lambda r: r.operator, reverse=True)
            if not (r.operator == ">=" and r.target == semantic_version.Version("0.0.0"))
        ]
        specifiers.append(",".join(parts))

    def upper(text: str) -> semantic_version.Version:
        bounds = [semantic_version.Version(p.lstrip("<>=!")) for p in text.split(",") if p and p[0] in "<="]
        return max(bounds) if bounds else semantic_version.Version("999999.0.0")

    return sorted(specifiers, key=upper, reverse=True)


def era_pins(distribution: str, version: str) -> List[str]:
    pins: List[str] = []
    for name, fixed_in, extra in ERA_PINS:
        if name == distribution and parse_version(version) < semantic_version.Version(fixed_in):
            pins += [p for p in extra if p not in pins]
    return pins


@dataclass(frozen=True)
class Need:
    """What a package needs from the environment its worker runs in.

    Attributes:
        source: the package path (for messages and commands).
        platform: its backend platform.
        distribution: the framework distribution its range constrains (None for ``python``).
        framework_range: that range (``*`` = any version).
        python_ranges: ranges the Python version must satisfy (all of them).
        requirements: the pinned ``name==version`` lines of ``0/requirements.lock``.
    """

    source: str
    platform: str
    distribution: Optional[str]
    framework_range: VersionRange
    python_ranges: Tuple[VersionRange, ...] = ()
    requirements: Tuple[str, ...] = ()

    @property
    def asks_for_anything(self) -> bool:
        """False when any environment with the framework serves it (today's in-process load)."""
        return bool(self.python_ranges or self.requirements or not self.framework_range.is_any)

    def describe(self) -> str:
        parts = []
        if self.distribution:
            parts.append(f"{self.distribution} {self.framework_range.text}")
        if self.python_ranges:
            parts.append("python " + " and ".join(r.text for r in self.python_ranges))
        if self.requirements:
            parts.append(", ".join(self.requirements))
        return "; ".join(parts) or "any environment"

    def python_ok(self, version: str) -> bool:
        return all(version in r for r in self.python_ranges)

    def problems(self, python_version: str, packages: Mapping[str, str]) -> List[str]:
        """What an environment with this Python and these distributions lacks ([] = it serves the package)."""
        problems = []
        if not self.python_ok(python_version):
            wanted = " and ".join(r.text for r in self.python_ranges)
            problems.append(f"python {wanted} (found {python_version})")
        if self.distribution:
            version = next(
                (
                    packages[normalize_name(d)]
                    for d in framework_distributions(self.platform)
                    if normalize_name(d) in packages
                ),
                packages.get(normalize_name(self.distribution)),
            )
            if version is None:
                problems.append(f"{self.distribution} {self.framework_range.text} (not installed)")
            elif version not in self.framework_range:
                problems.append(f"{self.distribution} {self.framework_range.text} (found {version})")
        problems += requirement_problems(self.requirements, lambda name: packages.get(normalize_name(name)))
        return problems

    def served_by(self, environment: Environment) -> bool:
        return not self.problems(environment.python_version, environment.packages) and all(
            normalize_name(name) in environment.packages for name in self.worker_requirements
        )

    @property
    def worker_requirements(self) -> Tuple[str, ...]:
        """What neuropod's worker needs in an environment serving this package.

        Its code comes from this process's source tree on PYTHONPATH, not
        from an install; of neuropod's dependencies it needs numpy always, and
        ``packaging`` where it checks pinned requirements (a Python package's
        lock, compared by :mod:`neuropod.requirements`).
        """
        return ("numpy", "packaging") if self.requirements else ("numpy",)

    def problems_here(self) -> List[str]:
        """What this process lacks to serve the package in-process."""
        from importlib import metadata

        here: Dict[str, str] = {}
        for line in self.requirements:
            name = Requirement(line).name
            try:
                here[normalize_name(name)] = metadata.version(name)
            except metadata.PackageNotFoundError:
                pass
        if self.distribution:
            found = installed_version(self.platform)
            if found is not None:
                here[normalize_name(self.distribution)] = found[1]
            elif self.framework_range.is_any:
                # Any version will do: loading reports the missing framework with the extra to install.
                here[normalize_name(self.distribution)] = "0.0.0"
        return self.problems(".".join(str(n) for n in sys.version_info[:3]), here)

    def found_here(self) -> str:
        if self.distribution is None:
            return "python " + ".".join(str(n) for n in sys.version_info[:3])
        found = installed_version(self.platform)
        return f"{found[0]} {found[1]}" if found else f"no {self.distribution}"


def need_of(package: Package) -> Need:
    """The need of an opened package (reads ``python_version`` from its ``config.json``)."""
    config = package.config
    distribution = framework_of(config.platform)
    framework_range = VersionRange.parse(config.platform_version_semver)
    if framework_range.is_any:  # what the artifact implies where the config states nothing
        from .legacy import implied_range

        implied = implied_range(package)
        if implied is not None:
            framework_range = VersionRange.parse(implied, field="platform_version_semver (implied by the artifact)")
    python_ranges: List[VersionRange] = []
    if config.platform == "python" and not framework_range.is_any:
        python_ranges.append(framework_range)
    try:
        raw = json.loads((package.root / layout.CONFIG).read_text())
    except (OSError, ValueError):
        raw = {}
    if raw.get("python_version"):
        python_ranges.append(VersionRange.parse(str(raw["python_version"]), field="python_version"))
    return Need(
        source=str(package.source),
        platform=config.platform,
        distribution=distribution,
        framework_range=framework_range if distribution else VersionRange.parse("*"),
        python_ranges=tuple(python_ranges),
        requirements=tuple(package.requirements()),
    )
