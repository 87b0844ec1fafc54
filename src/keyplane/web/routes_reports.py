"""``GET /v1/reports/keys``: a tenant's keys that need attention, each with its reasons."""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args

from fastapi import APIRouter, Query

from keyplane.core import hygiene as hy
from keyplane.services.hygiene import flagged_view
from keyplane.web.deps import CallerDep, Cursor, KeyplaneDep, Limit, TenantParam, page_out

router = APIRouter(tags=["keys"])

ReportDays = Annotated[int, Query(ge=1, le=hy.MAX_REPORT_DAYS)]
ReasonName = Literal["never_used", "unused", "no_expiry", "expiring", "expired",
                     "owner_disabled", "write_scopes_unused", "scopes_unused"]
assert set(get_args(ReasonName)) == set(hy.REASONS)


@router.get("/v1/reports/keys", summary="Keys that need attention, with the reasons")
def keys_report(caller: CallerDep, kp: KeyplaneDep, tenant_id: TenantParam = None,
                unused_days: Annotated[ReportDays, Query(description=(
                    "A key not used for this many days (never used: since it was created) is "
                    "`unused`"))] = hy.DEFAULT_UNUSED_DAYS,
                expiring_days: Annotated[ReportDays, Query(description=(
                    "A key expiring within this many days is `expiring`"))]
                = hy.DEFAULT_EXPIRING_DAYS,
                reason: Annotated[ReasonName | None, Query(description=(
                    "Only keys with this reason"))] = None,
                limit: Limit = 50, cursor: Cursor = None) -> dict[str, Any]:
    """Live (not revoked) keys with at least one reason, newest first; needs `keys:read`.
    Reasons: `never_used` (no valid verification since it was created, at least 7 days
    ago), `unused`, `no_expiry`, `expiring`, `expired`, `owner_disabled` (its owner is
    disabled or deleted), `write_scopes_unused` (holds scopes other than `*:read` and
    `keys:verify` and had no valid verification in `unused_days`), `scopes_unused` (used in
    `unused_days`, but some of its scopes were
    never needed: from per-scope usage counts, kept for verifications that name the scopes
    they need; the entry's `unused_scopes` lists them).
    `last_used_at` is written in batches (every `KEYPLANE_USAGE_FLUSH_SECONDS`)."""
    page = kp.hygiene.report(caller, tenant_id,
                             thresholds=hy.Thresholds(unused_days, expiring_days),
                             reason=reason, limit=limit, cursor=cursor)
    return page_out(page, flagged_view)
