"""How every ``neuropod`` command reports a user's mistake: one line on stderr, exit code 2, no traceback.

Internal: shared by ``neuropod.cli`` and the command groups registered on it
(envs, cache, isolation, tools), so each behaves the same.
"""

from __future__ import annotations

import functools
import sys
from typing import Any, Callable

import click

from .errors import NeuropodError, TestMismatchError

__all__ = ["UserError", "user_errors"]


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
            raise UserError(f"{type(exc).__name__}: {exc}") from None

    return wrapper
