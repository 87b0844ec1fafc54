"""``POST /v1/secret-scanning/reports``: a code host (GitHub's secret scanning partner program)
reports Keyplane credentials it found in public code.

The body is checked against the host's signature over the raw bytes (401 otherwise), a body
already accepted in the last 24 hours is refused as a replay (409), and every token gets a
label: ``true_positive`` for a credential Keyplane issued (then revoked or locked by the
tenant's policy), ``false_positive`` otherwise."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse

from keyplane.core.errors import ValidationError
from keyplane.core.rights import Caller, CredentialKind
from keyplane.services.leaks import parse_reports
from keyplane.web import contract, net
from keyplane.web.deps import KeyplaneDep

router = APIRouter(tags=["secret scanning"])

REPORT_SCHEMA = {"type": "array", "maxItems": 1000, "items": {
    "type": "object", "required": ["token"], "properties": {
        "token": {"type": "string"}, "type": {"type": "string"}, "url": {"type": "string"},
        "source": {"type": "string"}}}}
LABELS = {"type": "array", "items": {"type": "object", "properties": {
    "token_raw": {"type": "string"}, "token_type": {"type": "string"},
    "label": {"enum": ["true_positive", "false_positive"]}}}}


@router.post(
    "/v1/secret-scanning/reports",
    summary="Secret-scanning partner reports (GitHub format, ECDSA P-256 signed)",
    description="Body `[{\"token\", \"type\", \"url\", \"source\"}]` (at most 1000 tokens, "
    "1 MiB), signed over the raw body: base64 DER signature in `Github-Public-Key-Signature`, "
    "key id in `Github-Public-Key-Identifier`. Answers `[{\"token_raw\", \"token_type\", "
    "\"label\"}]`. 401: bad signature or unknown key id; 409: a replayed body.",
    openapi_extra={"requestBody": {"required": True, "content": {
        "application/json": {"schema": REPORT_SCHEMA}}}},
    responses={
        200: {"description": "A label for every token",
              "content": {"application/json": {"schema": LABELS}}},
        401: contract.error("No, a bad or an unknown signature (Github-Public-Key-*)"),
        409: contract.error("This very body was accepted already (a replay)"),
        413: contract.error("The report is larger than KEYPLANE_MAX_BODY_BYTES"),
        422: contract.error("Not a list of reports, or more than 1000 tokens"),
        503: contract.error("Secret scanning is not configured, or its keys cannot be loaded"),
    },
)
async def report(request: Request, kp: KeyplaneDep) -> JSONResponse:
    body = await request.body()  # bounded by KEYPLANE_MAX_BODY_BYTES before it is read
    key_id = request.headers.get("github-public-key-identifier")
    signature = request.headers.get("github-public-key-signature")
    await run_in_threadpool(kp.scanning_keys.check, body, key_id, signature)
    try:
        payload = json.loads(body)
    except ValueError:
        raise ValidationError("the body is not valid JSON", code="malformed_json") from None
    reports = parse_reports(payload)
    trusted = request.app.state.trusted_proxies
    address = net.client_address(request, trusted)
    caller = Caller(kind=CredentialKind.OPERATOR_KEY, scopes=frozenset(),
                    ip=str(address) if address else None,
                    request_id=request.scope.get("keyplane.request_id"),
                    name=f"secret-scanning:{key_id}"[:80],
                    user_agent=(request.headers.get("user-agent") or "")[:200] or None,
                    via="signed_report")
    outcomes = await run_in_threadpool(kp.leaks.handle, caller, reports,
                                       replay_digest=hashlib.sha256(body).hexdigest())
    answer: list[dict[str, Any]] = [
        {"token_raw": o.report.token, "token_type": o.report.type, "label": o.label}
        for o in outcomes
    ]
    return JSONResponse(answer)
