"""Run as a script: creates keys with djangorestframework-api-key itself in a SQLite database
(a path) or a PostgreSQL one (a ``postgresql://`` URL, its schema given as
``?options=-csearch_path=…``) — its own migrations, ``APIKey.objects.create_key`` — and prints
them as JSON. A subprocess, because Django's settings are configured once per process
(tests/sdk/test_django.py has its own)."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime, timedelta


def database(target: str) -> dict[str, object]:
    """Django's DATABASES entry for a SQLite path or a PostgreSQL URL."""
    if not target.startswith("postgresql://"):
        return {"ENGINE": "django.db.backends.sqlite3", "NAME": target}
    from urllib.parse import parse_qs, unquote, urlsplit

    url = urlsplit(target)
    options = parse_qs(url.query).get("options", [""])[0]
    return {"ENGINE": "django.db.backends.postgresql", "NAME": url.path.lstrip("/"),
            "USER": unquote(url.username or ""), "PASSWORD": unquote(url.password or ""),
            "HOST": url.hostname or "", "PORT": str(url.port or ""),
            "OPTIONS": {"options": options} if options else {}}


def main(target: str) -> None:
    import django
    from django.conf import settings

    settings.configure(
        DATABASES={"default": database(target)},
        INSTALLED_APPS=["rest_framework_api_key"], USE_TZ=True,
        SECRET_KEY="test-only-" + "y" * 40)
    django.setup()
    from django.core.management import call_command
    from rest_framework_api_key.models import APIKey

    call_command("migrate", verbosity=0)
    out = []
    for name, days, revoked in (("billing sync", 30, False), ("zapier", None, False),
                                ("old cron", 10, True)):
        expiry = datetime.now(UTC) + timedelta(days=days) if days else None
        obj, key = APIKey.objects.create_key(name=name, expiry_date=expiry, revoked=revoked)
        out.append({"name": name, "key": key, "prefix": obj.prefix,
                    "created": obj.created.isoformat(),
                    "expiry": expiry.isoformat() if expiry else None, "revoked": revoked})
    # a key that Django's default password hasher made (older versions of the library)
    from django.contrib.auth.hashers import PBKDF2PasswordHasher, make_password

    # (APIKey.objects.is_valid would upgrade it to sha512 on the spot: not called here)
    obj, key = APIKey.objects.create_key(name="legacy pbkdf2")
    APIKey.objects.filter(pk=obj.pk).update(
        hashed_key=make_password(key, hasher=PBKDF2PasswordHasher()))
    out.append({"name": "legacy pbkdf2", "key": key, "prefix": obj.prefix,
                "created": obj.created.isoformat(), "expiry": None, "revoked": False})
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1])
