"""The console: server-rendered pages at ``/`` for the people of a tenant, acting through the
same services and rights as keys (a session caller). Pages live in one module per section."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from starlette.staticfiles import StaticFiles

from keyplane.web.console import (
    account,
    api_users,
    audit,
    automations,
    connections,
    groups,
    hygiene,
    invitations,
    keys,
    members,
    operator,
    partners,
    settings,
)

STATIC = Path(__file__).resolve().parent.parent.parent / "admin" / "static"


def install(app: FastAPI) -> None:
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.include_router(keys.router)
    app.include_router(hygiene.router)
    app.include_router(connections.router)
    app.include_router(settings.router)
    app.include_router(audit.router)
    app.include_router(members.router)
    app.include_router(api_users.router)
    app.include_router(groups.router)
    app.include_router(automations.router)
    app.include_router(operator.router)  # operator staff
    app.include_router(partners.router)  # partner developers
    app.include_router(invitations.router)
    app.include_router(account.router)
