"""One-time share links: ``/v1/shares`` for the creator's tenant, and the page ``/s/{id}``.

The page itself hands nothing out: a link-preview bot's ``GET`` consumes nothing. The
"Reveal" button ``POST``s to ``/s/{id}/reveal`` (JSON only, so a cross-site form cannot burn
the link), which hands the ciphertext out once; the browser decrypts it with the key in the
link's fragment."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool
from starlette.responses import HTMLResponse, JSONResponse

from keyplane.core.errors import NotFound
from keyplane.core.rights import Caller, CredentialKind
from keyplane.core.views import share_out, ts
from keyplane.services.shares import GONE, ShareGone
from keyplane.web import net
from keyplane.web.deps import CallerDep, KeyplaneDep, TenantParam
from keyplane.web.errors import error_body
from keyplane.web.pages import html
from keyplane.web.schemas import ShareCreate

router = APIRouter()

SCRIPT = (Path(__file__).resolve().parent.parent / "admin" / "static" / "share.js").read_text

PAGE_CSP = ("default-src 'none'; script-src 'self'; connect-src 'self'; "
            "style-src 'unsafe-inline'; img-src 'self'; form-action 'none'; "
            "frame-ancestors 'none'; base-uri 'none'")
PRIVATE = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer",
           "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY",
           "X-Robots-Tag": "noindex, nofollow"}
TITLES = {"ready": "A secret for you", "opened": "Link already opened",
          "withdrawn": "Link withdrawn", "expired": "Link expired", "missing": "No such link"}


@router.post("/v1/shares", status_code=201, tags=["shares"],
             summary="Create a one-time share link for a secret sealed by the sender")
def create_share(body: ShareCreate, caller: CallerDep, kp: KeyplaneDep, request: Request,
                 tenant_id: TenantParam = None) -> dict[str, Any]:
    share = kp.shares.create(caller, tenant_id, body.fields())
    out = share_out(share, kp.ctx.clock.now())
    out["url"] = f"{kp.settings.base_url}/s/{share.id}"  # the sender appends #<key>
    return out


@router.get("/v1/shares/{share_id}", tags=["shares"],
            summary="A share link's state: opened_at, expires_at, withdrawn (never its secret)")
def show_share(share_id: str, caller: CallerDep, kp: KeyplaneDep,
               tenant_id: TenantParam = None) -> dict[str, Any]:
    return share_out(kp.shares.get(caller, tenant_id, share_id), kp.ctx.clock.now())


@router.delete("/v1/shares/{share_id}", status_code=204, tags=["shares"],
               summary="Withdraw a share link (its ciphertext is deleted)")
def withdraw_share(share_id: str, caller: CallerDep, kp: KeyplaneDep,
                   tenant_id: TenantParam = None) -> Response:
    kp.shares.withdraw(caller, tenant_id, share_id)
    return Response(status_code=204)


@router.get("/s/{share_id}", include_in_schema=False)
def share_page(share_id: str, kp: KeyplaneDep) -> HTMLResponse:
    state, share = kp.shares.look(share_id) if len(share_id) <= 64 else ("missing", None)
    status = {"ready": 200, "missing": 404}.get(state, 410)
    page = html("share.html", {
        "title": TITLES[state], "state": state, "id": share_id, "message": GONE.get(state, ""),
        "note": share.note if share else "", "expires_at": ts(share.expires_at) if share else "",
    })
    return HTMLResponse(page, status_code=status,
                        headers={**PRIVATE, "Content-Security-Policy": PAGE_CSP})


@router.post("/s/{share_id}/reveal", include_in_schema=False)
async def reveal(share_id: str, request: Request, kp: KeyplaneDep) -> JSONResponse:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json":
        return JSONResponse(error_body("invalid_request", "send the request from the share "
                                       "page (application/json)"), status_code=415,
                            headers=PRIVATE)
    address = net.client_address(request, request.app.state.trusted_proxies)
    caller = Caller(kind=CredentialKind.SESSION, scopes=frozenset(), name="share-link",
                    ip=str(address) if address else None,
                    request_id=request.scope.get("keyplane.request_id"),
                    user_agent=(request.headers.get("user-agent") or "")[:200] or None,
                    via="share_link")
    try:
        if len(share_id) > 64:
            raise NotFound("no such share link")
        ciphertext = await run_in_threadpool(kp.shares.open, caller, share_id)
    except NotFound:
        return JSONResponse(error_body("not_found", GONE["missing"]), status_code=404,
                            headers=PRIVATE)
    except ShareGone as gone:
        return JSONResponse(error_body(gone.code, gone.message), status_code=410,
                            headers=PRIVATE)
    return JSONResponse({"ciphertext": ciphertext}, headers=PRIVATE)


@router.get("/assets/share.js", include_in_schema=False)
def share_script() -> Response:
    return Response(SCRIPT(), media_type="text/javascript",
                    headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"})
