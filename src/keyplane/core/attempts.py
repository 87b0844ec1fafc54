"""Counting attempts: the port behind the one failed-attempt policy (``services/throttle.py``).

The policy decides what is counted, per what key and up to which limit; an adapter
(``cache/ratelimit.py``: the ``limits`` library, in memory or in Redis) keeps the counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Limit:
    """At most ``amount`` counted attempts in any window of ``seconds`` (a moving window).
    ``namespace`` keeps counts of different purposes apart in a shared store."""

    amount: int
    seconds: int
    namespace: str = "attempt"

    def __post_init__(self) -> None:
        if self.amount < 1 or self.seconds < 1:
            raise ValueError("a limit needs at least one attempt in at least one second")


class CountFault(Exception):
    """The counter store answered but could not make this one count (say, a key holding data
    of the wrong type). Tied to that one count: the policy refuses that key alone."""


class AttemptCounter(Protocol):
    """Counts attempts per ``(limit, *ident)``. A store that cannot be reached is the
    adapter's business (it counts in this process meanwhile); a count it cannot make raises
    :class:`CountFault`."""

    def hit(self, limit: Limit, *ident: str) -> int | None:
        """Count one attempt. ``None`` when it is within the limit; otherwise it was not
        counted and the answer is the seconds (at least 1) until one more would be."""
        ...

    def peek(self, limit: Limit, *ident: str) -> int | None:
        """Like :meth:`hit` without counting: ``None`` when one more attempt would be
        within the limit, else the seconds until it would."""
        ...

    def clear(self, limit: Limit, *ident: str) -> None:
        """Forget the attempts counted so far."""
        ...
