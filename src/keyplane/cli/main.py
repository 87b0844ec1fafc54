"""``keyplane``: serve, migrate, and script tenants, users, service accounts and keys.

Commands act directly on the configured database as the operator. Every command takes
``--json`` for scripts; people get Rich tables.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from sqlalchemy.exc import SQLAlchemyError

from keyplane.cli.actor import CLI
from keyplane.cli.output import console, emit_json, fail, fields, table
from keyplane.core.errors import KeyplaneError
from keyplane.core.model import PrincipalKind
from keyplane.core.views import principal_out, tenant_out

if TYPE_CHECKING:
    from keyplane.bootstrap import Keyplane

app = typer.Typer(help="Keyplane: API keys and connected apps for your product's API.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
tenants_app = typer.Typer(help="Tenants (customers; their id is the Location ID).",
                          no_args_is_help=True)
users_app = typer.Typer(help="Members who sign in.", no_args_is_help=True)
sa_app = typer.Typer(help="Service accounts (API only: they own keys, never sign in).",
                     no_args_is_help=True)
keys_app = typer.Typer(help="API keys.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(tenants_app, name="tenants")
app.add_typer(users_app, name="users")
app.add_typer(sa_app, name="service-accounts")
app.add_typer(keys_app, name="keys")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
TenantOpt = Annotated[str, typer.Option("--tenant", help="Tenant id (Location ID).")]
F = TypeVar("F", bound=Callable[..., Any])


@contextmanager
def opened(migrate_db: bool = True, *, seed: bool = True) -> Iterator[Keyplane]:
    """The container for one command, closed when the command ends, also on an error; the
    schema is brought up to date and the scope catalogue seeded first, so that the first
    command on a fresh machine (``keyplane tenants create``) just works."""
    from keyplane.bootstrap import build
    from keyplane.config import Settings

    with build(Settings(), migrate_db=migrate_db) as kp:
        if seed:
            kp.catalogue.seed()
        yield kp


def handled(fn: F) -> F:
    """Domain errors become a one-line message and exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except KeyplaneError as exc:
            fail(f"{exc.field}: {exc.message}" if exc.field and exc.field not in exc.message
                 else exc.message)
        except ValueError as exc:
            fail(str(exc))
        except SQLAlchemyError as exc:  # e.g. the database is unreachable: no traceback
            reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()
            fail(f"database error: {reason[0] if reason else type(exc).__name__}")

    return wrapper  # type: ignore[return-value]


# -- serve and db ---------------------------------------------------------------------------

@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Interface (default KEYPLANE_HOST)")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default KEYPLANE_PORT)")] = None,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes")] = 1,
    demo: Annotated[bool, typer.Option(help="Create a demo tenant on an empty database")] = False,
    migrate: Annotated[bool, typer.Option(help="Upgrade the schema first")] = True,
) -> None:
    """Run the HTTP API (migrating the database first)."""
    import logging

    from keyplane.config import Settings
    from keyplane.demo import ensure_demo
    from keyplane.logs import configure_logging
    from keyplane.serving import serve as run_server

    settings = Settings()
    host = host or settings.host
    port = port or settings.port
    configure_logging(settings.log_level, settings.log_format, settings.access_log)
    with opened(migrate_db=migrate) as kp:
        creds = ensure_demo(kp) if demo else None
    base = f"http://{host}:{port}"
    if creds:
        console.print("\n[bold green]Keyplane demo tenant created[/]")
        console.print(f"  Location ID (tenant id): {creds.tenant_id}")
        console.print(f"  Console:                 {base}/  (sign in as {creds.admin_email} / "
                      f"{creds.admin_password})", soft_wrap=True)
        console.print("  Management key (keys, members, tenant and every data scope; shown once):"
                      f"\n    {creds.management_key}", soft_wrap=True)
        console.print(f"  Verifier key (operator, keys:verify; shown once):\n"
                      f"    {creds.verifier_key}", soft_wrap=True)
        console.print(f"\n  Try: curl -H 'Authorization: Bearer <management key>' {base}/v1/keys",
                      soft_wrap=True)
    elif demo:
        console.print("\nThe database already has tenants; the demo secrets were shown on the "
                      "first "
                      "run only.\n  New management key: keyplane keys create --tenant <id> "
                      "--name ops --scope keys:write --no-require-tls --json\n"
                      "  Tenants: keyplane tenants list", soft_wrap=True)
    if settings.log_format == "json":  # every line of the process is a JSON object
        logging.getLogger("keyplane").info("Keyplane listening on %s  (API docs: %s/docs)",
                                           base, base)
    else:
        print(f"Keyplane listening on {base}  (API docs: {base}/docs)", flush=True)
    run_server(settings, host=host, port=port, workers=workers)


@db_app.command("upgrade")
@handled
def db_upgrade(json_out: JsonOpt = False) -> None:
    """Create or upgrade the schema to the newest migration."""
    with opened(migrate_db=True) as kp:
        rev = kp.schema_revision()
    emit_json({"revision": rev}) if json_out else print(f"database at revision {rev}")


@db_app.command("current")
@handled
def db_current(json_out: JsonOpt = False) -> None:
    """Show the schema revision."""
    with opened(migrate_db=False, seed=False) as kp:
        rev, head = kp.schema_revision(), kp.schema_head()
    emit_json({"revision": rev, "head": head}) if json_out else print(f"{rev} (head {head})")


# -- tenants --------------------------------------------------------------------------------

@tenants_app.command("create")
@handled
def tenants_create(name: str, json_out: JsonOpt = False) -> None:
    """Create a tenant; prints its id (the Location ID)."""
    with opened() as kp:
        out = tenant_out(kp.tenants.create(CLI, {"name": name}))
    emit_json(out) if json_out else fields("tenant", out)


@tenants_app.command("list")
@handled
def tenants_list(json_out: JsonOpt = False, limit: int = 200) -> None:
    """List tenants, newest first."""
    with opened() as kp:
        items = [tenant_out(t) for t in kp.tenants.list(CLI, limit=limit, cursor=None).items]
    if json_out:
        emit_json({"items": items})
    else:
        table("tenants", ["id", "name", "enabled", "created"],
              [(t["id"], t["name"], t["enabled"], t["created_at"]) for t in items])


# -- users and service accounts ------------------------------------------------------------

@users_app.command("create")
@handled
def users_create(
    tenant: TenantOpt,
    email: Annotated[str, typer.Option(help="Sign-in email")],
    role: Annotated[str, typer.Option(help="admin, member or read_only")] = "member",
    name: Annotated[str | None, typer.Option(help="Display name")] = None,
    password_stdin: Annotated[bool, typer.Option("--password-stdin",
                                                 help="Read the password from stdin")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Create a member of a tenant."""
    body: dict[str, Any] = {"email": email, "role": role}
    if name:
        body["name"] = name
    if password_stdin:
        body["password"] = sys.stdin.readline().rstrip("\r\n")
    with opened() as kp:
        out = principal_out(kp.principals.create(CLI, tenant, PrincipalKind.MEMBER, body))
    emit_json(out) if json_out else fields("member", out)


@users_app.command("set-password")
@handled
def users_set_password(
    tenant: TenantOpt,
    email: Annotated[str, typer.Option(help="The member's sign-in email")],
    json_out: JsonOpt = False,
) -> None:
    """Set a member's password, read from stdin; the member's sessions end."""
    password = sys.stdin.readline().rstrip("\r\n")
    with opened() as kp:
        out = principal_out(kp.principals.set_password(CLI, tenant, email, password))
    emit_json(out) if json_out else fields("member", out)


@sa_app.command("create")
@handled
def sa_create(
    tenant: TenantOpt,
    name: Annotated[str, typer.Option(help="e.g. 'API - Zapier'")],
    role: Annotated[str, typer.Option(help="admin, member or read_only")] = "member",
    group: Annotated[list[str] | None, typer.Option("--group", help="Group id (repeat)")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Create an API-only service account that can own keys."""
    with opened() as kp:
        made = kp.principals.create(
            CLI, tenant, PrincipalKind.SERVICE_ACCOUNT,
            {"name": name, "role": role, "group_ids": list(group or [])},
        )
        out = principal_out(made)
        note = kp.principals.no_data_note(made)
    if json_out:
        emit_json(out if note is None else {**out, "note": note})
        return
    fields("service account", out)
    if note is not None:
        console.print(f"\n[bold yellow]{note}[/]")


from keyplane.cli import accounts as _accounts  # noqa: E402,F401  (operators, partners)
from keyplane.cli import apps as _apps  # noqa: E402,F401  (registers the apps commands)
from keyplane.cli import audit as _audit  # noqa: E402,F401  (keyplane audit ...)
from keyplane.cli import backup as _backup  # noqa: E402,F401  (registers export/restore)
from keyplane.cli import bench as _bench  # noqa: E402,F401  (registers keyplane bench)
from keyplane.cli import hygiene as _hygiene  # noqa: E402,F401  (keys report, hygiene run)
from keyplane.cli import imports as _imports  # noqa: E402,F401  (keyplane import …)
from keyplane.cli import keys as _keys  # noqa: E402,F401  (registers the keys commands)
from keyplane.cli import worker as _worker  # noqa: E402,F401  (registers keyplane worker)
