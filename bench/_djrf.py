"""The djangorestframework-api-key baseline: a Django REST framework view behind ``HasAPIKey``,
answering the same JSON as the Keyplane-protected route, set up the way its users deploy it:
``DEBUG`` off, persistent database connections (``CONN_MAX_AGE``), served as WSGI. Settings
come from the environment (``BENCH_DJANGO_DIR`` holds the SQLite database).

    python bench/_djrf.py setup      # migrate and print a new API key
    gunicorn --chdir bench -k gthread _djrf:wsgi   # or: granian --interface wsgi _djrf:wsgi
    uvicorn --app-dir bench _djrf:application      # Django's ASGI handler (slower)
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import django
from django.conf import settings

DATA = Path(os.environ.get("BENCH_DJANGO_DIR", "."))

if not settings.configured:
    settings.configure(
        DEBUG=False,
        SECRET_KEY="bench-only-" + "x" * 40,  # a throwaway bench process
        ALLOWED_HOSTS=["*"],
        ROOT_URLCONF=__name__,
        INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth",
                        "rest_framework", "rest_framework_api_key"],
        MIDDLEWARE=[],
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3",
                               "NAME": str(DATA / "djrf.sqlite3"),
                               "CONN_MAX_AGE": None}},  # persistent connections
        REST_FRAMEWORK={"DEFAULT_AUTHENTICATION_CLASSES": [],
                        "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
                        "UNAUTHENTICATED_USER": None},
        USE_TZ=True,
    )
    django.setup()

from django.core.asgi import get_asgi_application  # noqa: E402
from django.core.wsgi import get_wsgi_application  # noqa: E402
from django.urls import path  # noqa: E402
from rest_framework.permissions import BasePermission  # noqa: E402
from rest_framework.request import Request  # noqa: E402
from rest_framework.response import Response  # noqa: E402
from rest_framework.views import APIView  # noqa: E402
from rest_framework_api_key.permissions import HasAPIKey  # noqa: E402

CONTACTS = [{"id": f"con_{i}", "name": f"Contact {i}"} for i in range(3)]


class Contacts(APIView):
    permission_classes: list[type[BasePermission]] = [HasAPIKey]

    def get(self, request: Request) -> Response:
        return Response({"items": CONTACTS})


def health(request: Any) -> Any:
    from django.http import HttpResponse

    return HttpResponse("ok")


urlpatterns = [path("contacts", Contacts.as_view()), path("", health)]

application = get_asgi_application()
wsgi = get_wsgi_application()


def setup() -> str:
    from django.core.management import call_command
    from rest_framework_api_key.models import APIKey

    call_command("migrate", verbosity=0, interactive=False)
    _, key = APIKey.objects.create_key(name="bench")
    return str(key)


if __name__ == "__main__" and sys.argv[1:] == ["setup"]:
    print(setup())
