import hashlib
import os

from _apps import product

import keyplane.sdk._verifier as v
from keyplane.sdk import KeyplaneMiddleware


def protected_blake():
    v._sha256 = hashlib.blake2s
    return KeyplaneMiddleware(product(), url=os.environ["BENCH_KEYPLANE_URL"],
                              token=os.environ["BENCH_VERIFIER_KEY"], exempt_paths=["/"])


def protected_nostate():
    app = KeyplaneMiddleware(product(), url=os.environ["BENCH_KEYPLANE_URL"],
                             token=os.environ["BENCH_VERIFIER_KEY"], exempt_paths=["/"])
    inner = app.app

    async def call(scope, receive, send):
        if scope["type"] == "http" and scope["path"] == "/contacts":
            ident = app._cached(scope)
            assert ident is not None
            scope["keyplane"] = ident
            await inner(scope, receive, send)
        else:
            await app(scope, receive, send)
    return call
