"""``keyplane worker``: webhook delivery and expiry reminders on their own, without the HTTP
API; ``keyplane reminders run``: one scan for expiry reminders (for cron)."""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Annotated

import typer

from keyplane.cli.main import JsonOpt, app, handled, opened
from keyplane.cli.output import console, emit_json


@app.command()
def worker(
    migrate: Annotated[bool, typer.Option(help="Upgrade the schema first")] = True,
) -> None:
    """Deliver webhooks and send expiry reminders until stopped (SIGTERM or Ctrl-C finishes
    the attempts under way).

    Run as many as you like, on as many hosts: each delivery is claimed by one of them, and
    each expiry reminder is sent once."""
    from keyplane.bootstrap import build
    from keyplane.config import Settings
    from keyplane.logs import configure_logging

    settings = Settings()
    configure_logging(settings.log_level, settings.log_format, settings.access_log)
    stop = threading.Event()

    def _stop(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    previous = {s: signal.signal(s, _stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        with build(settings, migrate_db=migrate) as kp:
            kp.deliveries.start()
            if settings.expiry_interval_seconds > 0:
                kp.expiry.start()
            print(f"Keyplane webhook worker {kp.deliveries.owner} running", flush=True)
            stop.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


reminders_app = typer.Typer(help="Expiry reminders (key.expiring, key.expired).",
                            no_args_is_help=True)
app.add_typer(reminders_app, name="reminders")


@reminders_app.command("run")
@handled
def reminders_run(
    force: Annotated[bool, typer.Option(
        "--force", help="Scan even if an instance scanned within "
        "KEYPLANE_EXPIRY_INTERVAL_SECONDS (each reminder is still sent once)")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Send the expiry reminders that are due, once (for cron, or with
    KEYPLANE_EXPIRY_INTERVAL_SECONDS=0)."""
    with opened() as kp:
        sent = kp.expiry.run(force=force)
    out = {"ran": sent is not None,
           "sent": [{"key_id": r.key_id, "threshold_days": r.threshold_days,
                     "expires_at": r.expires_at.isoformat(), "emailed": r.emailed}
                    for r in sent or []]}
    if json_out:
        emit_json(out)
    elif sent is None:
        console.print("Another instance scanned within the interval (--force to scan anyway).")
    else:
        console.print(f"Expiry reminders: {len(sent)} sent.")
