"""Framework version ranges (``platform_version_semver``) and the versions installed here.

Ranges are npm-style, as the original Neuropod wrote them: ``1.13.1``,
``> 1.13.1``, ``>=1.4 <2``, ``1.4.0 - 1.6.0``, ``^2.1``, ``~1.10``, ``1.x``,
``*`` and ``a || b``. Parsing is done by the maintained ``semantic_version``
library (its ``NpmSpec``); this module only normalises what npm accepts and it
does not (a space between an operator and its version) and turns framework
version strings (``2.13.0+cpu``, ``2.16.0rc1``) into semantic versions.

Nothing here imports a framework: installed versions come from package metadata.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from importlib import metadata
from typing import Optional, Tuple

import semantic_version

from .errors import FrameworkVersionError, VersionRangeError

__all__ = [
    "VersionRange",
    "parse_version",
    "framework_of",
    "framework_distributions",
    "installed_version",
    "check_platform_version",
]

# "> 1.2" -> ">1.2": npm allows the space, semantic_version does not.
_OPERATOR_SPACE = re.compile(r"([<>=~^]+)\s+")

#: platform -> (the distributions that provide its framework, first installed wins)
_FRAMEWORK_DISTRIBUTIONS = {
    "torchscript": ("torch",),
    "torch_export": ("torch",),
    "pytorch": ("torch",),
    "tensorflow": ("tensorflow", "tensorflow-cpu", "tensorflow-macos", "tf-nightly"),
    "keras": ("keras",),
    "onnx": ("onnxruntime", "onnxruntime-gpu"),
    "jax": ("jax",),
}


def parse_version(text: str) -> semantic_version.Version:
    """A semantic version from a framework's version string (``2.13.0+cpu`` -> ``2.13.0``).

    Raises:
        VersionRangeError: the text holds no version number.
    """
    base = str(text).strip().split("+", 1)[0]
    match = re.match(r"^v?(\d+(?:\.\d+){0,2})(.*)$", base)
    if not match:
        raise VersionRangeError(f"{text!r} is not a version number")
    numbers, rest = match.groups()
    parts = (numbers.split(".") + ["0", "0"])[:3]
    # PEP 440 pre-releases (rc1, b2, .dev3) become semver pre-release tags.
    tag = re.sub(r"[^0-9A-Za-z.]", "", rest.lstrip(".-"))
    return semantic_version.Version(".".join(str(int(p)) for p in parts) + (f"-{tag}" if tag else ""))


@dataclass(frozen=True)
class VersionRange:
    """A parsed npm-style range; ``version in range`` tests membership."""

    text: str
    _spec: semantic_version.NpmSpec

    @classmethod
    def parse(cls, text: str, field: str = "platform_version_semver") -> VersionRange:
        """Parse ``text``.

        Raises:
            VersionRangeError: not a valid npm-style range (names the field and the text).
        """
        if not isinstance(text, str) or not text.strip():
            raise VersionRangeError(f"{field}: expected a version range such as '*' or '>=2.0', got {text!r}")
        try:
            spec = semantic_version.NpmSpec(_OPERATOR_SPACE.sub(r"\1", text.strip()))
        except ValueError as exc:
            raise VersionRangeError(
                f"{field}: {text!r} is not a valid version range ({exc}); "
                "expected npm-style ranges such as '1.13.1', '>=1.4 <2', '1.4.0 - 1.6.0', '^2.1', '~1.10', '1.x', '*'"
            ) from None
        return cls(text.strip(), spec)

    @property
    def is_any(self) -> bool:
        return self.text in ("*", "x", "X", "")

    def __contains__(self, version: object) -> bool:
        if isinstance(version, str):
            version = parse_version(version)
        return bool(self._spec.match(version))

    def __str__(self) -> str:
        return self.text


def framework_of(platform: str) -> Optional[str]:
    """The distribution name whose version ``platform_version_semver`` constrains (None for ``python``)."""
    candidates = _FRAMEWORK_DISTRIBUTIONS.get(platform)
    return candidates[0] if candidates else None


def framework_distributions(platform: str) -> Tuple[str, ...]:
    """Every distribution that provides ``platform``'s framework (``tensorflow``, ``tensorflow-cpu`` ...)."""
    return _FRAMEWORK_DISTRIBUTIONS.get(platform, ())


def installed_version(platform: str) -> Optional[Tuple[str, str]]:
    """``(distribution, version)`` of the framework ``platform`` runs on in this process, or None.

    For the ``python`` platform it is the interpreter itself (``("python", "3.11.7")``).
    """
    if platform == "python":
        return "python", ".".join(str(n) for n in sys.version_info[:3])
    for distribution in _FRAMEWORK_DISTRIBUTIONS.get(platform, ()):
        try:
            return distribution, metadata.version(distribution)
        except metadata.PackageNotFoundError:
            continue
    return None


def check_platform_version(platform: str, range_text: str, where: str = "") -> None:
    """Refuse when the framework here does not satisfy ``range_text``.

    A missing framework is not this check's business (loading reports it with
    the extra to install); platforms without a framework version pass.

    Raises:
        VersionRangeError: the range is invalid.
        FrameworkVersionError: the installed version is outside the range.
    """
    version_range = VersionRange.parse(range_text)
    if version_range.is_any:
        return
    found = installed_version(platform)
    if found is None:
        return
    distribution, version = found
    if version not in version_range:
        prefix = f"{where}: " if where else ""
        raise FrameworkVersionError(
            f"{prefix}platform_version_semver {version_range.text!r} is not satisfied by "
            f"{distribution} {version} installed here",
            range_text=version_range.text,
            found=f"{distribution} {version}",
        )
