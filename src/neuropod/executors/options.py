"""The options ``load_neuropod`` takes, declared as one table per executor and backend.

Each table is a tuple of :class:`Option` rows: a name, what it means, its
default and a check that returns the value to use or raises
:class:`~neuropod.errors.OptionError`. ``load_neuropod`` puts together the
tables that apply to one load (the package options, the out-of-process ones
with ``use_ope=True``, the backend's own; or the remote ones for a URL) and
runs :func:`check_options` over what the caller gave: an option no table
declares is refused by name with the valid ones listed, and one that belongs
to another way of running is refused with the reason.

Adding an option is adding a row to the table it belongs to.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

from ..errors import OptionError

__all__ = [
    "Option",
    "OptionTable",
    "PACKAGE_OPTIONS",
    "check_options",
    "any_value",
    "flag",
    "number",
    "one_of",
    "optional_non_negative_int",
    "optional_positive_int",
    "optional_path",
]

#: Checks one option: ``check(name, value)`` returns the value to use or raises OptionError.
Check = Callable[[str, Any], Any]


def any_value(name: str, value: Any) -> Any:
    return value


def flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise OptionError(f"option {name!r}: expected True or False, got {value!r}")
    return value


def number(what: str, minimum: float, *, integer: bool, inclusive: bool = True, optional: bool = False) -> Check:
    """A check for numbers from ``minimum`` up (above it when not ``inclusive``).

    Args:
        what: the expected value in words, for the message (``"a positive int"``).
        minimum: the lowest value allowed.
        integer: ints only (floats are refused); otherwise floats come back as float.
        inclusive: whether ``minimum`` itself is allowed.
        optional: None is allowed too.
    """

    def check(name: str, value: Any) -> Any:
        if value is None and optional:
            return None
        right_type = isinstance(value, int) if integer else isinstance(value, (int, float))
        if isinstance(value, bool) or not right_type or (value < minimum if inclusive else value <= minimum):
            raise OptionError(f"option {name!r}: expected {'None or ' if optional else ''}{what}, got {value!r}")
        return value if integer else float(value)

    return check


optional_non_negative_int = number("a non-negative int", 0, integer=True, optional=True)
optional_positive_int = number("a positive int", 1, integer=True, optional=True)


def optional_path(name: str, value: Any) -> Optional[str]:
    if value is None:
        return None
    if not isinstance(value, (str, os.PathLike)):
        raise OptionError(f"option {name!r}: expected None or a path, got {type(value).__name__} {value!r}")
    return os.fspath(value)


def one_of(*choices: Any) -> Check:
    """A check that accepts exactly ``choices``."""

    def check(name: str, value: Any) -> Any:
        if value not in choices:
            raise OptionError(f"option {name!r}: expected one of {', '.join(map(repr, choices))}, got {value!r}")
        return value

    return check


@dataclass(frozen=True)
class Option:
    """One option of ``load_neuropod``.

    Attributes:
        name: the keyword argument.
        doc: what it does (docs/api.md lists these).
        default: the value when it is not given.
        check: ``check(name, value)`` returns the value to use or raises OptionError.
    """

    name: str
    doc: str
    default: Any = None
    check: Check = any_value


OptionTable = Tuple[Option, ...]


def _environment(name: str, value: Any) -> Optional[str]:
    if value == "current":
        return "current"
    return optional_path(name, value)


#: Options of every package loaded here, whether in this process or in workers.
PACKAGE_OPTIONS: OptionTable = (
    Option("visible_gpu", "the GPU to run on; None runs on the CPU", None, optional_non_negative_int),
    Option("use_ope", "run the model in worker processes over shared memory", False, flag),
    Option("verify_manifest", "check every package file against its sha256 manifest", True, flag),
    Option("validate", "check inputs and outputs against the spec on every call", True, flag),
    Option("intra_op_threads", "threads inside one operator, for backends that have them", None, optional_positive_int),
    Option("inter_op_threads", "threads across operators, for backends that have them", None, optional_positive_int),
    Option(
        "environment",
        "the Python environment that runs the model: 'current', an environment's path, or None to choose one",
        None,
        _environment,
    ),
    Option(
        "isolation",
        "how the worker is isolated: 'process', 'sandbox' or 'container'; None for the default",
        None,
        one_of(None, "process", "sandbox", "container"),
    ),
    # The original's own keywords, accepted so that its users' calls run unchanged.
    Option(
        "_always_use_native",
        "the original's choice between its native and pure-Python executors; one implementation runs here "
        "whatever the value (said once in the log)",
        True,
        flag,
    ),
    Option(
        "load_custom_ops",
        "load the package's custom ops (0/ops) before the model; False skips them in this process "
        "(a worker process loads them anyway, and says so once in the log)",
        True,
        flag,
    ),
)


def check_options(
    given: Mapping[str, Any],
    tables: Sequence[OptionTable],
    where: str,
    inapplicable: Optional[Mapping[str, str]] = None,
) -> Dict[str, Any]:
    """Check ``given`` against ``tables``; return every declared option's value (defaults filled in).

    Args:
        given: the options the caller passed.
        tables: the tables that apply to this load.
        where: what is being loaded, for messages (a path or URL).
        inapplicable: option name -> why it does not apply here (it belongs
            to another way of running the model).

    Raises:
        OptionError: an option is inapplicable (with the reason), unknown (with
            the valid ones) or has a wrong value.
    """
    declared: Dict[str, Option] = {}
    for table in tables:
        for option in table:
            declared[option.name] = option
    for name in given:
        if name in declared:
            continue
        reason = (inapplicable or {}).get(name)
        if reason is not None:
            raise OptionError(f"{where}: option {name!r} does not apply here: {reason}")
        listed = sorted(n for n in declared if not n.startswith("_"))  # the original's private keywords stay unlisted
        raise OptionError(f"{where}: unknown option {name!r}; valid options: {', '.join(listed)}")
    values: Dict[str, Any] = {}
    for name, option in declared.items():
        if name in given:
            try:
                values[name] = option.check(name, given[name])
            except OptionError as exc:
                raise OptionError(f"{where}: {exc}") from None
        else:
            values[name] = option.default
    return values
