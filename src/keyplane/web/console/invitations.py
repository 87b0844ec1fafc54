"""Invitations and reset links on the members pages: an admin invites an email with a role, or
makes a password reset link for a member. The link is mailed when a mail server is configured
and always shown here once, with a copy button, so the admin can pass it on."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.datastructures import FormData
from starlette.responses import RedirectResponse, Response

from keyplane.core.errors import Conflict, ValidationError
from keyplane.services.links import INVITE_LIFETIME, RESET_LIFETIME, IssuedLink
from keyplane.web import pages
from keyplane.web.console.base import Console, action, page
from keyplane.web.console.forms import KeyForm
from keyplane.web.console.members import ROLES, _member, _require_write

router = APIRouter(include_in_schema=False)
FIELDS = {"email": "Email", "role": "Role"}


def _form(c: Console, shown: KeyForm | None = None, status: int = 200) -> Response:
    _require_write(c, "invite members")
    return c.render("console/invite_new.html", {
        "form": shown or KeyForm({"email": "", "role": "member"}), "roles": ROLES,
        "nav": "members", "hours": int(INVITE_LIFETIME.total_seconds() // 3600),
    }, status=status, title="Invite a member")


def _issued(c: Console, issued: IssuedLink, *, heading: str, lead: str,
            lifetime: str) -> Response:
    return c.render("console/link_made.html", {
        "issued": issued, "heading": heading, "lead": lead, "lifetime": lifetime,
        "nav": "members",
    }, title=heading)


@router.get("/invitations/new")
async def new_invitation(request: Request) -> Response:
    return await page(request, _form)


@router.post("/invitations")
async def invite(request: Request) -> Response:
    def view(c: Console, form: FormData) -> Response:
        values = {k: (form.get(k) if isinstance(form.get(k), str) else "") for k in FIELDS}
        shown = KeyForm(dict(values))
        _require_write(c, "invite members")
        links = pages.env_of(c.request).links
        try:
            issued = links.invite(c.caller, c.tenant_id,
                                     {"email": str(values["email"]).strip(),
                                      "role": values["role"]})
        except (ValidationError, Conflict) as exc:
            if exc.field not in FIELDS:
                raise
            words = {"email": "Enter an email address, such as name@example.com.",
                     "role": "Choose one of the roles listed."}[exc.field]
            if isinstance(exc, Conflict):
                words = "Someone with this email is already a member."
            shown.errors[exc.field] = words
            return _form(c, shown, 409 if isinstance(exc, Conflict) else 422)
        hours = int(INVITE_LIFETIME.total_seconds() // 3600)
        return _issued(c, issued, heading="Invitation made",
                       lead=f"{issued.link.email} can join {c.signed_in.tenant.name} as "
                            f"{(issued.link.role or 'member').replace('_', ' ')} with this link.",
                       lifetime=f"It works once and expires in {hours} hours.")

    return await action(request, view)


@router.post("/invitations/{link_id}/withdraw")
async def withdraw(request: Request, link_id: str) -> Response:
    def view(c: Console, form: FormData) -> Response:
        _require_write(c, "withdraw invitations")
        pages.env_of(c.request).links.withdraw(c.caller, c.tenant_id, link_id)
        return RedirectResponse("/members?done=withdrawn", status_code=303)

    return await action(request, view)


@router.post("/members/{member_id}/reset-link")
async def reset_link(request: Request, member_id: str) -> Response:
    def view(c: Console, form: FormData) -> Response:
        member = _member(c, member_id)
        _require_write(c, "reset their password")
        issued = pages.env_of(c.request).links.admin_reset(c.caller, c.tenant_id, member.id)
        minutes = int(RESET_LIFETIME.total_seconds() // 60)
        return _issued(c, issued, heading="Password reset link made",
                       lead=f"{member.name} can set a new password with this link. Their "
                            "current password keeps working until they do; then their "
                            "sessions end.",
                       lifetime=f"It works once and expires in {minutes} minutes.")

    return await action(request, view)
