"""The key hygiene page: the tenant's keys that need attention and why (the same report as
``GET /v1/reports/keys``)."""

from __future__ import annotations

from urllib.parse import urlencode

from fastapi import APIRouter, Request
from starlette.responses import Response

from keyplane.core import hygiene as hy
from keyplane.web.console import present
from keyplane.web.console.base import Console, page
from keyplane.web.console.keys import PAGE_SIZE, owner_names

router = APIRouter(include_in_schema=False)

LABELS = {
    hy.Reason.NEVER_USED: "Never used",
    hy.Reason.UNUSED: "Unused",
    hy.Reason.NO_EXPIRY: "No expiry",
    hy.Reason.EXPIRING: "Expiring soon",
    hy.Reason.EXPIRED: "Expired",
    hy.Reason.OWNER_DISABLED: "Owner disabled",
    hy.Reason.WRITE_SCOPES_UNUSED: "Edit scopes unused",
    hy.Reason.SCOPES_UNUSED: "Scopes broader than used",
}


def _days(value: str | None, default: int) -> int:
    try:
        days = int(value or default)
    except ValueError:
        return default
    return days if 1 <= days <= hy.MAX_REPORT_DAYS else default


@router.get("/hygiene")
async def hygiene(request: Request) -> Response:
    def view(c: Console) -> Response:
        params = c.request.query_params
        unused = _days(params.get("unused_days"), hy.DEFAULT_UNUSED_DAYS)
        expiring = _days(params.get("expiring_days"), hy.DEFAULT_EXPIRING_DAYS)
        reason = params.get("reason") or ""
        reason = reason if reason in hy.REASONS else ""
        cursor = c.cursor
        result = c.kp.hygiene.report(c.caller, c.tenant_id,
                                     thresholds=hy.Thresholds(unused, expiring),
                                     reason=reason or None, limit=PAGE_SIZE, cursor=cursor)
        owners = owner_names(c, [i.key.owner_id for i in result.items])
        now = c.kp.ctx.clock.now()
        query = {"unused_days": unused, "expiring_days": expiring, "reason": reason}
        next_url = None
        if result.next_cursor:
            next_url = "/hygiene?" + urlencode({**query, "cursor": result.next_cursor})
        return c.render("console/hygiene.html", {
            "rows": [{"key": i.key, "owner": owners.get(i.key.owner_id or "", "—"),
                      "reasons": [LABELS[r] for r in i.reasons]} for i in result.items],
            "unused_days": unused, "expiring_days": expiring, "reason": reason,
            "reasons": [(r.value, LABELS[r]) for r in hy.Reason],
            "paged": cursor is not None, "next_url": next_url,
            "first_url": "/hygiene?" + urlencode(query), "times": present.Times(now),
            "nav": "hygiene",
        }, title="Key hygiene")

    return await page(request, view)
