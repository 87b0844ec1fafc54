"""``GET /v1/keys/{id}/usage``: a key's verifications per hour and outcome; ``POST /v1/usage``:
the uses a verifier answered from its own cache."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query

from keyplane.core.views import ts
from keyplane.web.deps import CallerDep, KeyplaneDep, TenantParam
from keyplane.web.schemas import UsageReport

router = APIRouter(tags=["keys"])

From = Annotated[datetime | None, Query(
    alias="from", description="Start (ISO 8601; UTC if no offset), rounded down to the hour. "
    "Default: 7 days before `to`")]
To = Annotated[datetime | None, Query(
    alias="to", description="End, exclusive (ISO 8601). Default: the end of the current hour")]


def _routes(prefix: str, operator: bool) -> None:
    @router.get(prefix + "/{key_id}/usage",
                summary="Usage of a key: verifications per hour and outcome, and last use")
    def usage(key_id: str, caller: CallerDep, kp: KeyplaneDep, start: From = None,
              end: To = None, tenant_id: TenantParam = None) -> dict[str, Any]:
        """Counts are written in batches (every ``KEYPLANE_USAGE_FLUSH_SECONDS``), so the
        latest requests appear after the next flush. Outcomes are verification codes
        (``VALID``, ``REVOKED``, ``RATE_LIMITED`` …). At most 93 days per call."""
        series = kp.usage_reports.series(caller, None if operator else tenant_id, key_id,
                                         start=start, end=end, operator=operator)
        return {
            "key_id": series["key_id"], "from": ts(series["from"]), "to": ts(series["to"]),
            "items": [{"hour": ts(i["hour"]), "outcome": i["outcome"], "count": i["count"]}
                      for i in series["items"]],
            "last_used_at": ts(series["last_used_at"]),
        }


_routes("/v1/keys", operator=False)
_routes("/v1/operator/keys", operator=True)


@router.post("/v1/usage", tags=["verify"],
             summary="Report uses a verifier answered from its own cache")
def report_usage(body: UsageReport, caller: CallerDep, kp: KeyplaneDep) -> dict[str, int]:
    """A verifier that caches answers (the SDK middleware does) reports here how many requests
    each key served from its cache, so usage counts and ``last_used_at`` cover every request.
    Needs ``keys:verify``. The uses are counted as ``VALID`` in the hour they are reported;
    ids the caller may not verify are ignored (``ignored`` counts them)."""
    uses: dict[str, int] = {}
    for use in body.uses:  # the same id twice adds up
        uses[use.key_id] = uses.get(use.key_id, 0) + use.count
    return kp.usage_reports.report(caller, uses)
