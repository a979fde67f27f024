"""docs/api.md is the public API, generated from the code: every public name with its signature.

Regenerate it with ``python tests/unit/test_api_doc.py > docs/api.md``; the
test fails when it is out of date. A module is public when it is listed in
:data:`PUBLIC_MODULES`; its public names are its ``__all__``. Every other
module is internal (the reference says so).
"""

from __future__ import annotations

import importlib
import inspect
import sys
from pathlib import Path
from typing import Any, List

REPO = Path(__file__).resolve().parents[2]
API_DOC = REPO / "docs" / "api.md"
REGENERATE = "python tests/unit/test_api_doc.py > docs/api.md"

#: Public modules, each with what it is for. Extend this list (and regenerate) to publish a module.
PUBLIC_MODULES = [
    ("neuropod", "the package: load, specs, every error class"),
    ("neuropod.loader", "`load_neuropod` and `Neuropod` under the original's import path"),
    ("neuropod.spec", "tensor specs, dtypes, problem definitions, validation"),
    ("neuropod.spec.problem", "problem definitions and problem files (metrics, tolerances, labels)"),
    ("neuropod.errors", "the exception tree (drawn in the module's docstring)"),
    ("neuropod.packagers", "one packager per framework, with the original's arguments"),
    ("neuropod.package", "opening packages on disk"),
    ("neuropod.backends", "the backend registry (third-party backends register by entry point)"),
    ("neuropod.backends.base", "what a backend implements, and helpers for writing one"),
    ("neuropod.executors", "where a model runs: the interface every executor implements"),
    ("neuropod.plan", "the one planning step: where and how a model runs, and the options it sorts"),
    ("neuropod.serving", "the KServe v2 model server"),
    ("neuropod.serving.logs", "JSON logging for an embedded server"),
    ("neuropod.tools", "problem-agnostic tools: evaluation, comparison, input builders, benchmarks"),
    ("neuropod.envs", "Python environments for a package's framework version"),
    ("neuropod.isolation", "sandboxes and containers for workers"),
    ("neuropod.trust", "code, signatures and the isolation a package must run in"),
    ("neuropod.integrations.ray", "Ray Serve and Ray Data"),
    ("neuropod.utils.eval_utils", "the original's `neuropod.utils.eval_utils`"),
    ("neuropod.utils.config_utils", "the original's `neuropod.utils.config_utils`"),
    ("neuropod.utils.randomify", "the original's `neuropod.utils.randomify`"),
]


class _Raw:
    """An annotation shown as written (string annotations would otherwise get quotes)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


def _signature(obj: Any) -> str:
    try:
        signature = inspect.signature(obj)
    except Exception:  # objects that are callable without a Python signature (a Ray deployment)
        return "(...)"

    def raw(annotation: Any) -> Any:
        return _Raw(annotation) if isinstance(annotation, str) else annotation

    parameters = [p.replace(annotation=raw(p.annotation)) for p in signature.parameters.values()]
    return str(signature.replace(parameters=parameters, return_annotation=raw(signature.return_annotation)))


def _summary(obj: Any) -> str:
    doc = inspect.getdoc(obj) or ""
    first = doc.split("\n\n", 1)[0].replace("\n", " ").strip()
    return f" — {first}" if first else ""


def _own_methods(cls: type) -> List[str]:
    names = []
    for name, value in vars(cls).items():
        if name.startswith("_") and name not in ("__enter__", "__call__"):
            continue
        if inspect.isfunction(value) or isinstance(value, (classmethod, staticmethod, property)):
            names.append(name)
    return names


def _entry(module_name: str, name: str, obj: Any) -> List[str]:
    if inspect.isclass(obj):
        if issubclass(obj, BaseException):
            bases = ", ".join(base.__name__ for base in obj.__bases__)
            return [f"- `class {name}({bases})`{_summary(obj)}"]
        lines = [f"- `class {name}{_signature(obj)}`{_summary(obj)}"]
        for method in _own_methods(obj):
            value = vars(obj)[method]
            if isinstance(value, property):
                lines.append(f"  - `{name}.{method}` (property){_summary(value)}")
            else:
                lines.append(f"  - `{name}.{method}{_signature(getattr(obj, method))}`{_summary(value)}")
        return lines
    if getattr(obj, "__module__", None) == "typing":
        return [f"- `{name}`: a type alias, `{obj!r}`".replace("typing.", "")]
    if callable(obj):
        return [f"- `{name}{_signature(obj)}`{_summary(obj)}"]
    if inspect.ismodule(obj):
        return [f"- `{name}` (module `{obj.__name__}`)"]
    return [f"- `{name}`: `{type(obj).__name__}`"]


def _options_section() -> List[str]:
    from neuropod.executors.remote import RemoteOptions
    from neuropod.plan import LOCAL_OPTIONS, CallOptions

    lines = ["## Options of `load_neuropod`", ""]
    lines += [
        "Generated from the options classes (docs/architecture.md): each option is one field of the",
        "class of its concern. An option given where its class does not apply raises `OptionError`",
        "with the class's reason; one no class declares raises `OptionError` listing the valid ones.",
        "",
    ]
    for cls in LOCAL_OPTIONS + (RemoteOptions,):
        applies = cls.APPLIES or "it applies to every package loaded here"
        if cls is CallOptions:
            applies = "it applies to every model, a package here or a URL"
        lines += [f"### `{cls.__name__}` (`{cls.__module__}`)", "", f"Where: {applies}.", ""]
        if cls.REMOTE:
            lines += [f"For a model URL: does not apply, {cls.REMOTE}.", ""]
        lines += ["| option | default | meaning |", "|---|---|---|"]
        for option in cls.table():
            lines.append(f"| `{option.name}` | `{option.shown or repr(option.default)}` | {option.doc} |")
        lines.append("")
    return lines


def render() -> str:
    lines = [
        "# API reference",
        "",
        f"<!-- Generated: {REGENERATE} (tests/unit/test_api_doc.py checks it is current). -->",
        "",
        "The public API is the modules below and, in each, the names of its `__all__`. Every other",
        "module (`neuropod.ope.*`, `neuropod.kserve.*`, `neuropod.executors.inprocess`/`ope`/`remote`,",
        "`neuropod.serving.dataplane`, the adapters, `neuropod.package.archive` and the like) is",
        "internal: importable, but free to change without notice.",
        "",
    ]
    for module_name, purpose in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        lines += [f"## `{module_name}`", "", f"{purpose[0].upper()}{purpose[1:]}.", ""]
        for name in getattr(module, "__all__", []):
            lines += _entry(module_name, name, getattr(module, name))
        lines.append("")
    lines += _options_section()
    return "\n".join(lines).rstrip() + "\n"


def test_api_doc_is_current() -> None:
    from conftest import require

    for module in ("grpc", "aiohttp", "ray"):  # the serving and Ray modules are documented too
        require(module)
    expected = render()
    assert API_DOC.exists(), f"docs/api.md is missing: {REGENERATE}"
    assert API_DOC.read_text(encoding="utf-8") == expected, f"docs/api.md is out of date: {REGENERATE}"


def test_every_public_module_declares_its_public_names() -> None:
    for module_name, _ in PUBLIC_MODULES:
        if module_name in ("neuropod.integrations.ray",):
            continue  # imports Ray; covered by test_api_doc_is_current
        module = importlib.import_module(module_name)
        assert getattr(module, "__all__", None), f"{module_name} has no __all__"


if __name__ == "__main__":
    sys.path.insert(0, str(REPO / "tests"))
    sys.stdout.write(render())
