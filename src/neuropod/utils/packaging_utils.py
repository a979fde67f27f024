"""The original's ``neuropod.utils.packaging_utils``: writing your own packager.

The original's packagers were functions decorated with
``@packager(platform=...)``: the function writes the framework's files into
the package directory it is given (``neuropod_path``), and the decorator does
the rest (config, custom ops, test data, zip, self-test). :func:`packager`
does the same over this project's packaging pipeline
(:mod:`neuropod.packagers`), so a packager written for the original runs
here, and gets the manifest, atomic writing and checks of the others.
"""

from __future__ import annotations

import datetime
import functools
import inspect
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

__all__ = [
    "COMMON_DOC_PRE",
    "COMMON_DOC_POST",
    "zip_date",
    "zip_modtime",
    "set_packager_docstring",
    "packager",
    "expand_default_kwargs",
]

#: The date the original stamped on zip entries. Zips here are stamped with
#: :data:`neuropod.package.layout.ZIP_TIMESTAMP`; both make the same tree zip to the same bytes.
zip_date = datetime.datetime(year=2000, month=1, day=1, hour=0, minute=0, second=0)
zip_modtime = time.mktime(zip_date.timetuple())

#: Replaces ``{common_doc_pre}`` in a packager's docstring.
COMMON_DOC_PRE = """
    :param  neuropod_path:      Where to write the package (a zip unless package_as_zip=False).

    :param  model_name:         The model's name.
"""

#: Replaces ``{common_doc_post}`` in a packager's docstring.
COMMON_DOC_POST = """
    :param  platform_version_semver:    The framework versions the model runs on, as an npm-style
                                        range (``*``, ``1.13.1``, ``>= 2.0``). Default ``*``.

    :param  input_spec:         The inputs: a list of ``{"name", "dtype", "shape"}`` dicts. A shape holds
                                ints, None (any size) and symbols (strings: one size per call).

    :param  output_spec:        The outputs, in the same form.

    :param  input_tensor_device:    Input name -> ``"CPU"`` or ``"GPU"``, where it differs from
                                    ``default_input_tensor_device``.

    :param  default_input_tensor_device:    Where inputs go unless named above (``"GPU"``).

    :param  custom_ops:         Paths of custom-op shared libraries to include; they are loaded before the model.

    :param  package_as_zip:     Write a zip (default) or a directory.

    :param  test_input_data:    Inputs of a self-test run on the finished package.

    :param  test_expected_out:  Outputs the self-test must produce; a mismatch raises ValueError.

    :param  persist_test_data:  Store the test data in the package.

    :param  neuropod_load_args: ``load_neuropod`` keywords of the self-test.
"""

# Keywords the pipeline consumes; every other keyword also reaches the decorated function, as in the original.
_PIPELINE_ONLY = ("package_as_zip", "custom_ops", "test_input_data", "test_expected_out", "persist_test_data")


def set_packager_docstring(f: Callable[..., Any]) -> Callable[..., Any]:
    """Fill ``{common_doc_pre}`` and ``{common_doc_post}`` in ``f``'s docstring; return ``f``."""
    if f.__doc__:
        f.__doc__ = f.__doc__.replace("{common_doc_pre}", COMMON_DOC_PRE).replace("{common_doc_post}", COMMON_DOC_POST)
    return f


def _default_args(f: Callable[..., Any]) -> Dict[str, Any]:
    if hasattr(f, "neuropod_default_args"):
        return dict(f.neuropod_default_args)
    try:
        parameters = inspect.signature(f).parameters.values()
    except (TypeError, ValueError):
        return {}
    return {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}


def expand_default_kwargs(deps: List[Callable[..., Any]]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A decorator that sets ``f.neuropod_default_args``: the defaults of ``deps`` and ``f``, later ones winning."""

    def inner(f: Callable[..., Any]) -> Callable[..., Any]:
        defaults: Dict[str, Any] = {}
        for dep in [*deps, f]:
            defaults.update(_default_args(dep))
        f.neuropod_default_args = defaults  # type: ignore[attr-defined]
        return f

    return inner


def packager(platform: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Turn ``f(neuropod_path, **kwargs)``, which writes a framework's files, into a packager for ``platform``.

    The packager takes keyword arguments only: ``neuropod_path``,
    ``model_name``, ``input_spec``, ``output_spec``, the shared packaging
    keywords and ``f``'s own. ``f`` is called with the package directory as
    ``neuropod_path`` and every keyword but the pipeline's own
    (``package_as_zip``, ``custom_ops``, test data), ``platform`` included. It
    may create ``0/data`` itself and may write ``0/config.json``.
    """

    def inner(f: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(f)
        def wrapper(**kwargs: Any) -> Path:
            from ..packagers._pipeline import create_neuropod

            neuropod_path = kwargs.pop("neuropod_path")
            passed = {k: v for k, v in kwargs.items() if k not in _PIPELINE_ONLY}

            def write_model(root: Path) -> Optional[Dict[str, Any]]:
                data_dir = root / "0" / "data"
                if data_dir.is_dir() and not any(data_dir.iterdir()):
                    data_dir.rmdir()  # the original's packagers create it (os.makedirs fails on an existing one)
                f(neuropod_path=str(root), platform=platform, **passed)
                data_dir.mkdir(parents=True, exist_ok=True)
                return None  # any 0/config.json is f's own

            pipeline = {k: v for k, v in kwargs.items() if k in _PIPELINE_ONLY}
            shared = ("platform_version_semver", "input_tensor_device", "default_input_tensor_device")
            return create_neuropod(
                neuropod_path=neuropod_path,
                model_name=kwargs["model_name"],
                platform=platform,
                input_spec=kwargs.get("input_spec"),
                output_spec=kwargs.get("output_spec"),
                write_model=write_model,
                neuropod_load_args=kwargs.get("neuropod_load_args"),
                **{k: kwargs[k] for k in shared if k in kwargs},
                **pipeline,
            )

        set_packager_docstring(wrapper)
        wrapper.neuropod_default_args = _default_args(f)  # type: ignore[attr-defined]
        return wrapper

    return inner
