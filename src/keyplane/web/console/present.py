"""How keys, scopes and times look on the console's pages (no rules here: the services decide
what may be done; this only says how it reads)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from keyplane.core import scopes as sc
from keyplane.core.model import ApiKey, Principal, PrincipalKind
from keyplane.core.rights import Caller

EXPIRES_SOON = timedelta(days=14)
UNUSED_FOR = timedelta(days=90)
ACTIONS = {"read": "View", "write": "Edit"}
MANAGEMENT_AREAS = ("keys", "members", "tenant")


def area_title(area: str) -> str:
    known = sc.DATA_AREAS.get(area)
    return known or area.replace("_", " ").replace("-", " ").capitalize()


def action_title(action: str) -> str:
    return ACTIONS.get(action) or action.replace("_", " ").replace("-", " ").capitalize()


def scope_label(scope: str) -> str:
    """"Contacts View", "Payments Edit": the words of the scope grid."""
    area, _, action = scope.partition(":")
    return f"{area_title(area)} {action_title(action)}"


def shown_scopes(scopes: Iterable[str]) -> list[str]:
    """A key's scopes as people read them: Edit already includes View, so View is not repeated
    for an area with Edit."""
    chosen = set(scopes)
    kept = [s for s in chosen
            if not (s.endswith(":read") and s.removesuffix(":read") + ":write" in chosen)]
    return [scope_label(s) for s in sorted(kept)]


def minimal_scopes(scopes: Iterable[str]) -> list[str]:
    """The ticked boxes as scopes to store: a ticked Edit stands for View too."""
    chosen = set(scopes)
    return sorted(s for s in chosen
                  if not (s.endswith(":read") and s.removesuffix(":read") + ":write" in chosen))


# -- the scope grid -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Box:
    scope: str
    area: str  # "Contacts": visually hidden, so the label reads "Contacts View"
    action: str  # "View", "Edit", or another action's title
    kind: str  # "view", "edit" or "other" (the script ticks View with Edit)
    description: str
    checked: bool
    holdable: bool  # the signed-in person holds it, so may grant it


@dataclass(frozen=True)
class Row:
    area: str
    title: str
    boxes: list[Box]


@dataclass(frozen=True)
class Grid:
    title: str
    hint: str
    rows: list[Row]


def _row(area: str, actions: dict[str, str], chosen: set[str], caller: Caller | None) -> Row:
    title = area_title(area)
    order = sorted(actions, key=lambda a: (a not in ("read", "write"), a != "read", a))
    expanded = sc.expand(chosen)
    boxes = [
        Box(scope=f"{area}:{a}", area=title, action=action_title(a),
            kind={"read": "view", "write": "edit"}.get(a, "other"), description=actions[a],
            checked=f"{area}:{a}" in expanded,
            holdable=caller is None or not caller.lacks([f"{area}:{a}"]))
        for a in order
    ]
    return Row(area=area, title=title, boxes=boxes)


def _areas(catalogue: sc.Catalogue) -> tuple[dict[str, dict[str, str]], list[str]]:
    """(actions by area, the data areas in the catalogue's usual order)"""
    areas: dict[str, dict[str, str]] = {}
    for scope, description in catalogue.entries.items():
        area, _, action = scope.partition(":")
        if area == "platform":
            continue  # operator keys only
        areas.setdefault(area, {})[action] = description
    known = list(sc.DATA_AREAS)
    data = sorted((a for a in areas if a not in MANAGEMENT_AREAS),
                  key=lambda a: (a not in known, known.index(a) if a in known else 0, a))
    return areas, data


def scope_grids(catalogue: sc.Catalogue, chosen: Iterable[str], caller: Caller) -> list[Grid]:
    """Data areas first (in the catalogue's usual order), then management areas."""
    picked = set(chosen)
    areas, data = _areas(catalogue)
    management = [a for a in MANAGEMENT_AREAS if a in areas]
    return [
        Grid("Data access", "What the key may read or change in your account.",
             [_row(a, areas[a], picked, caller) for a in data]),
        Grid("Management", "What the key may do in Keyplane itself.",
             [_row(a, areas[a], picked, caller) for a in management]),
    ]


def data_grid(catalogue: sc.Catalogue, chosen: Iterable[str]) -> list[Grid]:
    """A data-access group's grid: data areas only (groups never hold management scopes)."""
    picked = set(chosen)
    areas, data = _areas(catalogue)
    return [Grid("Data areas", "What its members and API users may reach.",
                 [_row(a, areas[a], picked, None) for a in data])]


# -- keys ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Badge:
    label: str
    tone: str  # "warn" or "info"


@dataclass(frozen=True)
class KeyRow:
    key: ApiKey
    owner: str
    state: str  # "Active", "Locked" or "Expired"
    badges: list[Badge]
    scopes: list[str]


def key_state(key: ApiKey, now: datetime) -> str:
    if not key.enabled:
        return "Locked"
    if key.expires_at is not None and key.expires_at <= now:
        return "Expired"
    return "Active"


def badges(key: ApiKey, now: datetime) -> list[Badge]:
    out = []
    if key.expires_at is not None and now < key.expires_at <= now + EXPIRES_SOON:
        out.append(Badge("Expires soon", "warn"))
    if key.last_used_at is None:
        out.append(Badge("Never used", "info"))
    elif key.last_used_at <= now - UNUSED_FOR:
        out.append(Badge("Unused for 90 days", "warn"))
    return out


def key_row(key: ApiKey, now: datetime, owners: dict[str, str]) -> KeyRow:
    return KeyRow(key=key, owner=owners.get(key.owner_id or "", "Unknown"),
                  state=key_state(key, now), badges=badges(key, now),
                  scopes=shown_scopes(key.scopes))


def owner_name(p: Principal) -> str:
    """How the key list names an owner (short; the key's page and the form say more)."""
    return f"{p.name} (API user)" if p.kind is PrincipalKind.SERVICE_ACCOUNT else p.name


def owner_label(p: Principal) -> str:
    if p.kind is PrincipalKind.SERVICE_ACCOUNT:
        return f"{p.name} (API user)"
    return p.name if not p.email or p.email == p.name else f"{p.name} ({p.email})"


# -- times --------------------------------------------------------------------------------------

class Times:
    """Dates as people read them, relative to the server's clock."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    @staticmethod
    def date(at: datetime | None) -> str:
        return at.strftime("%-d %b %Y") if at else ""

    @staticmethod
    def iso(at: datetime | None) -> str:
        return at.isoformat(timespec="seconds") if at else ""

    @staticmethod
    def full(at: datetime | None) -> str:
        return at.strftime("%-d %b %Y, %H:%M UTC") if at else ""

    def ago(self, at: datetime | None) -> str:
        if at is None:
            return "Never"
        return _span(self.now - at, "ago") if at <= self.now else self.date(at)

    def until(self, at: datetime | None) -> str:
        if at is None:
            return "Never"
        if at <= self.now:
            return f"Expired {self.date(at)}"
        return self.date(at)


def _span(delta: timedelta, suffix: str) -> str:
    seconds = int(delta.total_seconds())
    for size, unit in ((86400, "day"), (3600, "hour"), (60, "minute")):
        if seconds >= size:
            n = seconds // size
            return f"{n} {unit}{'s' if n != 1 else ''} {suffix}"
    return "Just now"


# -- a key's usage ------------------------------------------------------------------------------

# outcome: (how people read it, the colour of its part of a bar)
OUTCOMES: dict[str, tuple[str, str]] = {
    "VALID": ("Allowed", "#1d6b3a"),
    "INSUFFICIENT_SCOPE": ("Missing scope", "#c2410c"),
    "IP_NOT_ALLOWED": ("Address not allowed", "#7c3aed"),
    "TLS_REQUIRED": ("Not a secure connection", "#0e7490"),
    "RATE_LIMITED": ("Rate limited", "#be185d"),
    "DISABLED": ("Locked or disabled", "#475569"),
    "EXPIRED": ("Expired", "#b3261e"),
    "REVOKED": ("Deleted", "#1f2937"),
}
CHART_W, CHART_H, CHART_LEFT, CHART_TOP, CHART_BOTTOM = 720, 200, 44, 10, 24


def outcome_label(outcome: str) -> str:
    return OUTCOMES.get(outcome, (outcome.replace("_", " ").capitalize(), ""))[0]


@dataclass(frozen=True)
class Segment:
    y: float
    height: float
    colour: str
    label: str
    count: int


@dataclass(frozen=True)
class Bar:
    x: float
    width: float
    day: str
    total: int
    segments: list[Segment]


@dataclass(frozen=True)
class UsageChart:
    """Requests per day by outcome, as an SVG drawn on the server, and the same as a table."""

    width: int
    height: int
    left: int
    bottom: float  # the y of the axis
    bars: list[Bar]
    ticks: list[tuple[float, str]]  # (y, label) of the horizontal lines
    days: list[tuple[float, str]]  # (x, label) under the axis
    legend: list[tuple[str, str, int]]  # (label, colour, requests)
    outcomes: list[str]  # the table's columns (labels), in legend order
    rows: list[tuple[str, list[int], int]]  # days with requests: (day, counts, total)
    total: int
    summary: str  # the chart in one sentence, for screen readers


def _nice(top: int) -> int:
    """A round number at least ``top`` for the scale (1, 2 or 5 times a power of ten)."""
    step = 1
    while True:
        for m in (1, 2, 5):
            if m * step >= top:
                return m * step
        step *= 10


def usage_chart(days: list[tuple[date, dict[str, int]]]) -> UsageChart:
    order = [o for o in OUTCOMES if any(o in counts for _, counts in days)]
    order += sorted({o for _, counts in days for o in counts} - set(OUTCOMES))
    totals = {o: sum(c.get(o, 0) for _, c in days) for o in order}
    top = _nice(max([sum(c.values()) for _, c in days] + [1]))
    plot_h = CHART_H - CHART_TOP - CHART_BOTTOM
    bottom = CHART_TOP + plot_h
    slot = (CHART_W - CHART_LEFT - 4) / max(len(days), 1)
    bars = []
    for i, (day, counts) in enumerate(days):
        y = float(bottom)
        segments = []
        for o in order:
            n = counts.get(o, 0)
            if not n:
                continue
            h = plot_h * n / top
            y -= h
            segments.append(Segment(round(y, 2), round(h, 2), OUTCOMES.get(o, ("", "#64748b"))[1]
                                    or "#64748b", outcome_label(o), n))
        bars.append(Bar(round(CHART_LEFT + i * slot + slot * 0.15, 2), round(slot * 0.7, 2),
                        day.strftime("%-d %b"), sum(counts.values()), segments))
    ticks = [(round(bottom - plot_h * f, 2), f"{int(top * f):,}") for f in (0, 0.5, 1)
             if f == 0 or top * f == int(top * f)]
    marks = [(round(CHART_LEFT + i * slot + slot / 2, 2), day.strftime("%-d %b"))
             for i, (day, _) in enumerate(days) if (len(days) - 1 - i) % 7 == 0]
    total = sum(totals.values())
    refused = total - totals.get("VALID", 0)
    if total:
        parts = ", ".join(f"{totals[o]:,} {outcome_label(o).lower()}" for o in order)
        busiest = max(days, key=lambda d: sum(d[1].values()))
        summary = (f"{total:,} requests in the last {len(days)} days ({parts}); "
                   f"{refused:,} refused. The busiest day was "
                   f"{busiest[0].strftime('%-d %B')}, with {sum(busiest[1].values()):,}.")
    else:
        summary = f"No requests in the last {len(days)} days."
    return UsageChart(
        width=CHART_W, height=CHART_H, left=CHART_LEFT, bottom=bottom, bars=bars, ticks=ticks,
        days=marks,
        legend=[(outcome_label(o), OUTCOMES.get(o, ("", "#64748b"))[1] or "#64748b", totals[o])
                for o in order],
        outcomes=[outcome_label(o) for o in order],
        rows=[(day.strftime("%-d %b %Y"), [c.get(o, 0) for o in order], sum(c.values()))
              for day, c in reversed(days) if c],
        total=total, summary=summary)
