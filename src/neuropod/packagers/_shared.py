"""The keyword arguments every packager takes, declared once.

Each is a field of :class:`PackagingArgs`: its type, and in the
``Annotated`` metadata its default and its line in the packager's docs. A
packager takes them as ``**shared: Unpack[PackagingArgs]`` (or one of the
narrower dicts below, when it takes some of them by position), so type
checkers and IDEs list each of them, with its type, in the packager's
signature. :func:`packager` gives the packager at runtime what a signature
written out would: the defaults, every keyword in ``help()`` and
``inspect.signature``, their lines in its docstring (in place of its
``**shared:`` line), and Python's own ``TypeError`` for a keyword it does not
take.

This module uses no ``from __future__ import annotations``: the fields'
metadata is read at runtime. ``Unpack`` is imported by the packagers for type
checkers only, so Python < 3.11 needs no ``typing_extensions`` at runtime.
"""

import functools
import inspect
import re
import textwrap
from dataclasses import dataclass
from typing import Annotated, Any, Callable, Dict, Iterable, Mapping, Optional, Tuple, TypedDict, TypeVar, cast

from ..errors import SpecError
from ..spec import problem_specs
from ._pipeline import PathLike, Requirements, Specs

__all__ = [
    "CommonArgs",
    "PackagingArgs",
    "PackagingArgsAfterRequirements",
    "PackagingArgsAfterSpecs",
    "SHARED",
    "Shared",
    "packager",
    "specs_of",
]


@dataclass(frozen=True)
class Shared:
    """A shared keyword's default and its line in every packager's docstring."""

    default: Any
    doc: str


class SpecArgs(TypedDict, total=False):
    input_spec: Annotated[
        Specs, Shared(None, 'the inputs: a list of ``{"name", "dtype", "shape"}`` dicts (or TensorSpecs).')
    ]
    output_spec: Annotated[Specs, Shared(None, "the outputs, in the same form.")]


class CommonArgs(TypedDict, total=False):
    problem: Annotated[
        Any, Shared(None, "instead of both specs: a ProblemDefinition, its dict form or a problem file.")
    ]
    test_input_data: Annotated[
        Optional[Mapping[str, Any]],
        Shared(None, "inputs of the self-test that runs the finished package (stored with ``persist_test_data``)."),
    ]
    test_expected_out: Annotated[
        Optional[Mapping[str, Any]],
        Shared(None, "outputs the self-test must produce (None: it only runs the model)."),
    ]
    persist_test_data: Annotated[
        bool, Shared(True, "store the test data in the package (``test_data.npz``) for ``neuropod test``.")
    ]
    package_as_zip: Annotated[bool, Shared(True, "write a zip (default) or a directory.")]
    custom_ops: Annotated[
        Iterable[PathLike],
        Shared((), "custom-op shared libraries, copied into ``0/ops`` and loaded before the model."),
    ]
    platform_version_semver: Annotated[
        str, Shared("*", 'the framework versions the package runs on (``"*"``, ``">=2.0"``).')
    ]
    input_tensor_device: Annotated[
        Optional[Mapping[str, str]],
        Shared(None, 'input name -> ``"CPU"`` or ``"GPU"`` where it differs from the default.'),
    ]
    default_input_tensor_device: Annotated[
        str, Shared("GPU", "where inputs go unless ``input_tensor_device`` says otherwise.")
    ]
    zip_compression: Annotated[
        Optional[int],
        Shared(
            None,
            "None: each file deflated unless it barely compresses (weights are stored); or "
            "``zipfile.ZIP_DEFLATED`` / ``zipfile.ZIP_STORED`` for every file.",
        ),
    ]
    keep_failed: Annotated[
        bool, Shared(False, "leave a package whose self-test failed at ``neuropod_path`` for inspection.")
    ]
    self_test_options: Annotated[
        Optional[Dict[str, Any]], Shared(None, "``load_neuropod`` options of the self-test (``use_ope=True``, ...).")
    ]
    neuropod_load_args: Annotated[
        Optional[Mapping[str, Any]],
        Shared(None, "the original's name for ``self_test_options`` (the two are merged)."),
    ]


class RequirementsArgs(TypedDict, total=False):
    requirements: Annotated[
        Requirements,
        Shared(None, "pinned ``name==version`` lines (a string or a list), stored in ``0/requirements.lock``."),
    ]


class PackagingArgs(SpecArgs, CommonArgs, RequirementsArgs, total=False):
    """Every shared keyword: for a packager that takes them all by keyword."""


class PackagingArgsAfterSpecs(CommonArgs, RequirementsArgs, total=False):
    """For a packager that takes ``input_spec`` and ``output_spec`` by position."""


class PackagingArgsAfterRequirements(SpecArgs, CommonArgs, total=False):
    """For a packager that takes ``requirements`` by position (the Python code packagers)."""


#: name -> default and doc, in the order packagers list them.
SHARED: Dict[str, Shared] = {name: hint.__metadata__[0] for name, hint in PackagingArgs.__annotations__.items()}
#: name -> the type as ``help()`` shows it.
_SHOWN: Dict[str, str] = {
    name: re.sub(r"ForwardRef\('([^']*)'\)", r"\1", inspect.formatannotation(hint.__origin__))
    for name, hint in PackagingArgs.__annotations__.items()
}

Packager = TypeVar("Packager", bound=Callable[..., Any])


def packager(**defaults: Any) -> Callable[[Packager], Packager]:
    """Decorate a packager that takes ``**shared``: every shared keyword it does not name is one of its own.

    Args:
        defaults: a shared keyword's default where this packager's differs.
    """
    unknown = sorted(set(defaults) - set(SHARED))
    if unknown:
        raise TypeError(f"packager(): {unknown} are not shared packaging keywords")

    def decorate(function: Packager) -> Packager:
        signature = inspect.signature(function)
        named = [p for p in signature.parameters.values() if p.kind is not p.VAR_KEYWORD]
        shared = [name for name in SHARED if name not in signature.parameters]
        filled = {name: defaults.get(name, SHARED[name].default) for name in shared}
        takes = {p.name for p in named if p.kind is not p.VAR_POSITIONAL} | set(shared)

        @functools.wraps(function)
        def call(*args: Any, **kwargs: Any) -> Any:
            for name in kwargs:
                if name not in takes:
                    raise TypeError(f"{function.__name__}() got an unexpected keyword argument {name!r}")
            return function(*args, **{**filled, **kwargs})

        keywords = [
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=filled[name], annotation=_SHOWN[name])
            for name in shared
        ]
        call.__signature__ = signature.replace(parameters=[*named, *keywords])  # type: ignore[attr-defined]
        call.__doc__ = _documented(function.__doc__, shared)
        return cast(Packager, call)

    return decorate


def _documented(doc: Optional[str], shared: Iterable[str]) -> Optional[str]:
    """``doc`` with its ``**shared:`` line (or the end of its Args) replaced by a line per shared keyword."""
    if doc is None:  # python -OO
        return None
    lines = doc.split("\n")
    start = next((i for i, line in enumerate(lines) if line.strip() == "Args:"), None)
    if start is None:
        lines += ["", "    Args:"]
        start = len(lines) - 1
    indent = " " * (len(lines[start]) - len(lines[start].lstrip()) + 4)
    entries = [
        textwrap.fill(f"{name}: {SHARED[name].doc}", 116, initial_indent=indent, subsequent_indent=indent + "    ")
        for name in shared
    ]
    marker = next((i for i, line in enumerate(lines) if line.strip().startswith("**shared:")), None)
    if marker is not None:
        end = marker + 1
        while end < len(lines) and len(lines[end]) - len(lines[end].lstrip()) > len(indent):
            end += 1  # the marker's continuation lines
        return "\n".join(lines[:marker] + entries + lines[end:])
    end = start + 1
    while end < len(lines) and (not lines[end].strip() or lines[end].startswith(indent)):
        end += 1
    while not lines[end - 1].strip():
        end -= 1
    return "\n".join(lines[:end] + entries + lines[end:])


def specs_of(
    shared: CommonArgs,
    input_spec: Any,
    output_spec: Any,
    from_test_data: bool = True,
    required_by: Optional[str] = None,
) -> Tuple[Any, Any]:
    """The specs for a packager that needs them before the pipeline: as given, or read off ``problem=``.

    Without a problem, a spec left out is read off the test data (unless
    ``from_test_data`` is False). The problem is taken out of ``shared``: the
    pipeline gets the specs instead.

    Raises:
        SpecError: a spec is still missing, and the packager (``required_by``) needs both.
    """
    test_data = (shared["test_input_data"], shared["test_expected_out"]) if from_test_data else ()
    specs = problem_specs(shared["problem"], input_spec, output_spec, *test_data)
    shared["problem"] = None
    if required_by is not None and any(spec is None for spec in specs):
        raise SpecError(
            f"{required_by}: input_spec= and output_spec= are required (or problem=, or test data to read them off)"
        )
    return specs
