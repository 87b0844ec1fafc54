"""Which scopes a proxied request needs: the operator's route map (``KEYPLANE_ROUTE_MAP``).

Each entry is ``"<METHOD> <path pattern>" = ["scope", …]``:

- METHOD is an HTTP method (``GET``, ``POST``, …) or ``*`` for any; a ``HEAD`` request also
  matches ``GET`` entries.
- The pattern is a path starting with ``/``, split at ``/`` into segments. A segment ``*``
  matches exactly one non-empty segment; a final ``/*`` matches everything below (one or more
  segments: ``/contacts/*`` matches ``/contacts/1`` and ``/contacts/1/notes``, not
  ``/contacts``). Any other segment matches itself exactly (case-sensitive).
- The query string is ignored. A path with ``.`` or ``..`` segments, an empty segment
  (``//``), a backslash or an encoded ``/`` or ``\\`` is refused rather than matched: an
  upstream could read it as another route.
- When several entries match, the most specific wins: the most literal segments; on a tie,
  the one whose literal segments come first; then the longer pattern; then an exact method
  over ``*``.
- An empty list means any valid key may pass. A request no entry matches is refused.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from urllib.parse import unquote

from keyplane.core.errors import ValidationError

_METHOD = re.compile(r"\A(?:[A-Z]{1,20}|\*)\Z")
_SEGMENT = re.compile(r"\A[A-Za-z0-9._~!$&'()+,;=:@%-]*\Z")
_ENCODED_SEPARATOR = re.compile(r"%(?:2f|5c)", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Route:
    text: str  # as the operator wrote it
    method: str
    segments: tuple[str, ...]  # "*" matches one segment
    rest: bool  # a final "/*": everything below
    scopes: frozenset[str]
    rank: tuple[object, ...]

    def matches(self, method: str, path: tuple[str, ...]) -> bool:
        if self.method != "*" and self.method != method and not (
                method == "HEAD" and self.method == "GET"):
            return False
        n = len(self.segments)
        if self.rest:
            if len(path) <= n:
                return False
        elif len(path) != n:
            return False
        return all(s == "*" or s == p for s, p in zip(self.segments, path, strict=False))


class RouteMap:
    def __init__(self, routes: Collection[Route]) -> None:
        self.routes = sorted(routes, key=lambda r: r.rank, reverse=True)  # most specific first

    def match(self, method: str, uri: str) -> Route | None:
        """The entry deciding ``method uri``, or None (refused: unmapped or not canonical)."""
        path = canonical_path(uri)
        if path is None:
            return None
        method = method.upper()
        for route in self.routes:
            if route.matches(method, path):
                return route
        return None

    @classmethod
    def parse(cls, table: Mapping[str, object], known: Collection[str]) -> RouteMap:
        """The map from the TOML table; every scope must be in the catalogue ``known``."""
        routes = []
        seen: set[tuple[str, tuple[str, ...], bool]] = set()
        for text, scopes in table.items():
            method, space, pattern = text.strip().partition(" ")
            pattern = pattern.strip()
            if not space or not _METHOD.match(method) or not pattern.startswith("/"):
                raise _bad(text, 'an entry is "METHOD /path" (METHOD in capitals, or *)')
            parts = tuple(pattern[1:].split("/"))
            rest = (len(parts) > 1 and parts[-1] == "*") or parts == ("*",)
            segments = parts[:-1] if rest else parts
            if pattern == "/":
                segments = ("",)
            elif any(not s or s in (".", "..") or (s != "*" and not _SEGMENT.match(s))
                     for s in segments):
                raise _bad(text, "each path segment must be non-empty, plain URL characters, "
                           "or *")
            if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
                raise _bad(text, "the value must be a list of scopes")
            unknown = sorted(set(scopes) - set(known))
            if unknown:
                raise _bad(text, f"unknown scope(s) {', '.join(unknown)}: not in the "
                           "scope catalogue")
            if (method, segments, rest) in seen:
                raise _bad(text, "the same route is mapped twice")
            seen.add((method, segments, rest))
            literal = tuple(s != "*" for s in segments)
            rank = (sum(literal), literal, len(segments), not rest, method != "*")
            routes.append(Route(text, method, segments, rest, frozenset(scopes), rank))
        return cls(routes)


def canonical_path(uri: str) -> tuple[str, ...] | None:
    """The decoded segments of a request URI's path, or None when it is not canonical."""
    path = uri.split("?", 1)[0].split("#", 1)[0]
    if not path.startswith("/") or _ENCODED_SEPARATOR.search(path):
        return None
    try:
        decoded = unquote(path, errors="strict")
    except UnicodeDecodeError:
        return None
    if "\\" in decoded or "\x00" in decoded:
        return None
    segments = tuple(decoded[1:].split("/"))
    if any(s in (".", "..") for s in segments) or any(not s for s in segments[:-1]):
        return None
    return segments


def _bad(entry: str, why: str) -> ValidationError:
    return ValidationError(f"KEYPLANE_ROUTE_MAP entry {entry!r}: {why}", field="route_map")
