"""Shared by the property tests of inputs, the OPE wire codec and the KServe decoders.

Case counts: each test states its CI count; ``NEUROPOD_PROPERTY_LONG=1``
multiplies them by :data:`LONG_FACTOR` (the long run recorded in
docs/security.md). Every case runs under a per-case alarm, so a hang fails
the case instead of stalling CI.
"""

from __future__ import annotations

import contextlib
import os
import signal
from typing import Any, Callable, Iterator, Tuple, Type

from hypothesis import HealthCheck, settings

from neuropod.errors import NeuropodError

LONG = os.environ.get("NEUROPOD_PROPERTY_LONG") == "1"
#: How many times the CI count a long run executes.
LONG_FACTOR = 8
CASE_TIMEOUT_S = 5.0


def cases(ci_count: int) -> settings:
    """Hypothesis settings for ``ci_count`` cases in CI (times LONG_FACTOR in a long run)."""
    return settings(
        max_examples=ci_count * (LONG_FACTOR if LONG else 1),
        deadline=None,  # the alarm bounds a case; hypothesis' deadline only reports slowness
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
        database=None,
    )


class CaseHung(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: float = CASE_TIMEOUT_S) -> Iterator[None]:
    def hung(*_: Any) -> None:
        raise CaseHung(f"a case ran past {seconds} s")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def outcome(call: Callable[[], Any], also: Tuple[Type[BaseException], ...] = ()) -> Any:
    """``call()``'s result, or the NeuropodError it raised (``also``: protocol-level refusals allowed too).

    Any other exception fails the case with its type in the message; so does a hang.
    """
    with time_limit():
        try:
            return call()
        except NeuropodError as exc:
            return exc
        except also as exc:
            return exc
        except CaseHung:
            raise
        except Exception as exc:
            raise AssertionError(f"a foreign {type(exc).__name__} escaped: {exc!r}") from exc
