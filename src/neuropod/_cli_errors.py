"""How every ``neuropod`` command reports a user's mistake: one line on stderr, exit code 2, no traceback.

Internal: shared by ``neuropod.cli`` and the command groups registered on it
(envs, cache, isolation, tools), so each behaves the same.
"""

from __future__ import annotations

import functools
import sys
import traceback
from typing import Any, Callable

import click

from .errors import NeuropodError, TestMismatchError

__all__ = ["UserError", "user_errors", "VERBOSE"]

#: ``ctx.meta`` key: ``neuropod --verbose`` (print a failure's full traceback, its chained causes included).
VERBOSE = "neuropod.verbose"


class UserError(click.ClickException):
    """A mistake in what the user asked for: one line on stderr, exit code 2."""

    exit_code = 2


def user_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn library and file errors into one clean line and exit code 2 (a failed self-test: exit 1)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except TestMismatchError as exc:
            click.echo(f"FAILED: {exc}", err=True)
            sys.exit(1)
        except (NeuropodError, OSError) as exc:
            context = click.get_current_context(silent=True)
            if context is not None and context.meta.get(VERBOSE):
                click.echo("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)), err=True)
            elif exc.__cause__ is not None:
                raise UserError(f"{type(exc).__name__}: {exc} (neuropod --verbose shows the full traceback)") from None
            raise UserError(f"{type(exc).__name__}: {exc}") from None

    return wrapper
