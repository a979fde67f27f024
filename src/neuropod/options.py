"""Options, each declared once: a field of the options class of its concern.

An options class is a frozen dataclass deriving from :class:`Options`; each of
its options is one field declared with :func:`setting` — its type (the
annotation), default, check and doc on one line::

    workers: int = setting(1, check=positive_int, doc="worker processes serving the model")

Building the object runs every check (a check returns the value to keep, so
``[0, 1]`` becomes ``(0, 1)``, or raises :class:`~neuropod.errors.OptionError`
naming the option, what it expects and what came). Everything else is derived
from the fields: :meth:`Options.table` (docs/api.md, the valid options a
message lists), :meth:`Options.names`, and the message refusing an option
where its class does not apply (:attr:`Options.APPLIES`, :attr:`Options.REMOTE`).
:func:`neuropod.plan.make_plan` sorts ``load_neuropod``'s keywords into these
objects.

Dataclasses rather than attrs: the options travel into worker processes that
run in other interpreters (an environment built for torch 1.4 on Python 3.8),
which import neuropod's own code and nothing else of the caller's
environment; the standard library is there, attrs may not be. A field's
metadata carries what attrs' validator and docstring would.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Dict, FrozenSet, Mapping, Optional, Sequence, Tuple, Type, TypeVar

from .errors import OptionError

__all__ = [
    "Option",
    "Options",
    "OptionTable",
    "setting",
    "check_rows",
    "any_value",
    "flag",
    "optional_flag",
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


def optional_flag(name: str, value: Any) -> Optional[bool]:
    if value is not None and not isinstance(value, bool):
        raise OptionError(f"option {name!r}: expected None, True or False, got {value!r}")
    return value  # type: ignore[no-any-return]


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


def setting(
    default: Any = dataclasses.MISSING,
    *,
    check: Check = any_value,
    doc: str,
    factory: Optional[Callable[[], Any]] = None,
    shown: Optional[str] = None,
) -> Any:
    """Declare one option: a dataclass field whose metadata holds its check and doc.

    Args:
        default: the value when it is not given.
        check: ``check(name, value)`` returns the value to keep or raises OptionError.
        doc: what it does, in one line (docs/api.md and messages show it).
        factory: makes the default instead, per object (``sys.executable``).
        shown: how docs show a default that differs per machine ("this interpreter").
    """
    metadata = {"check": check, "doc": doc, "shown": shown}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclass(frozen=True)
class Option:
    """One option as docs and messages show it, derived from its field (:meth:`Options.table`).

    A third-party backend declares its own options as a tuple of these
    (its class attribute ``OPTIONS``).

    Attributes:
        name: the keyword argument.
        doc: what it does.
        default: the value when it is not given.
        check: ``check(name, value)`` returns the value to use or raises OptionError.
        shown: how docs show the default, when it differs per machine.
    """

    name: str
    doc: str
    default: Any = None
    check: Check = any_value
    shown: Optional[str] = None


OptionTable = Tuple[Option, ...]

_O = TypeVar("_O", bound="Options")


class Options:
    """The base of every options class (a frozen dataclass whose options are :func:`setting` fields).

    Fields declared without :func:`setting` are not options: the plan fills
    them in (the isolation level it chose, for one).
    """

    #: Where the class's options apply, said when one is given where they do not
    #: ("it is an option of out-of-process execution (use_ope=True)").
    APPLIES: ClassVar[str] = ""
    #: Why they mean nothing for a model on a server; empty where they apply there.
    REMOTE: ClassVar[str] = ""

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):  # type: ignore[arg-type]
            check = field.metadata.get("check")
            if check is not None:
                object.__setattr__(self, field.name, check(field.name, getattr(self, field.name)))

    @classmethod
    def table(cls) -> OptionTable:
        """The class's options, in declaration order."""
        rows = []
        for field in dataclasses.fields(cls):  # type: ignore[arg-type]
            if "doc" not in field.metadata:
                continue
            if field.default_factory is not dataclasses.MISSING:
                default = field.default_factory()
            else:
                default = field.default
            meta = field.metadata
            rows.append(Option(field.name, meta["doc"], default, meta["check"], meta["shown"]))
        return tuple(rows)

    @classmethod
    def names(cls) -> FrozenSet[str]:
        return frozenset(row.name for row in cls.table())

    @classmethod
    def default_of(cls, name: str) -> Any:
        return next(row.default for row in cls.table() if row.name == name)

    @classmethod
    def field_like(cls, name: str) -> Any:
        """A new dataclass field declared as option ``name`` of this class (for a class that offers it too)."""
        field = next(f for f in dataclasses.fields(cls) if f.name == name)  # type: ignore[arg-type]
        meta = field.metadata
        return setting(field.default, check=meta["check"], doc=meta["doc"], shown=meta["shown"])

    @classmethod
    def of(cls: Type[_O], given: Mapping[str, Any], where: str = "", **more: Any) -> _O:
        """The object built from the options in ``given`` this class declares (the rest are ignored).

        Args:
            given: option name -> value, as the caller passed them.
            where: what is being loaded (a path or URL); it starts every message.
            **more: values of the fields that are not options.
        """
        names = cls.names()
        try:
            return cls(**{name: value for name, value in given.items() if name in names}, **more)  # type: ignore[call-arg]
        except OptionError as exc:
            raise OptionError(f"{where}: {exc}" if where else str(exc)) from None


def check_rows(given: Mapping[str, Any], rows: Sequence[Option], where: str) -> Dict[str, Any]:
    """The values of ``given`` that ``rows`` declare, checked (a backend's own options)."""
    values: Dict[str, Any] = {}
    for row in rows:
        if row.name in given:
            try:
                values[row.name] = row.check(row.name, given[row.name])
            except OptionError as exc:
                raise OptionError(f"{where}: {exc}") from None
    return values
