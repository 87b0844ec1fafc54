"""``keyplane worker``: the webhook delivery worker on its own, without the HTTP API."""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Annotated

import typer

from keyplane.cli.main import app


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
    configure_logging(settings.log_level)
    kp = build(settings, migrate_db=migrate)
    stop = threading.Event()

    def _stop(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    previous = {s: signal.signal(s, _stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        kp.deliveries.start()
        if settings.expiry_interval_seconds > 0:
            kp.expiry.start()
        print(f"Keyplane webhook worker {kp.deliveries.owner} running", flush=True)
        stop.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        kp.close()
