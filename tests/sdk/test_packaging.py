"""The SDK installs on its own: its wheel (``packages/keyplane-sdk``) is built, installed into a
clean virtual environment without the server, and used there against a real Keyplane.

The build and the install use the machine's package index (hatchling, httpx2); without one the
tests are skipped, except in CI (``KEYPLANE_TEST_REQUIRE_SERVICES=1``), where they fail.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import venv
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import Tenant
from tests.support import REQUIRE_SERVICES, RunningServer

ROOT = Path(__file__).resolve().parents[2]
PROJECT = ROOT / "packages" / "keyplane-sdk"
# what the index cannot serve, or cannot be reached: a machine without an index, not a defect
_NO_INDEX = ("No matching distribution found", "Could not find a version",
             "Failed to establish a new connection", "Network is unreachable",
             "Temporary failure in name resolution")


@dataclass
class Installed:
    wheel: Path
    python: Path  # the clean environment's interpreter


def _pip(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", *args],
                          capture_output=True, text=True, timeout=timeout, check=False)


def _checked(done: subprocess.CompletedProcess[str], what: str) -> None:
    if done.returncode == 0:
        return
    output = done.stdout + done.stderr
    if not REQUIRE_SERVICES and any(sign in output for sign in _NO_INDEX):
        pytest.skip(f"{what}: no package index reachable")
    raise AssertionError(f"{what} failed:\n{output[-4000:]}")


def test_the_sdk_imports_nothing_else_of_keyplane() -> None:
    """Fast, and without an index: every import in the SDK's source (import-linter's contract
    says the same in ``make lint``)."""
    sdk = ROOT / "src" / "keyplane" / "sdk"
    found: list[str] = []
    for path in sorted(sdk.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found += [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                assert node.level == 0, f"{path.name}: a relative import"
                found.append(node.module or "")
    assert "keyplane.sdk._protocol" in found  # the walk sees the SDK's own imports
    outside = sorted({m for m in found if m.split(".")[0] == "keyplane"
                      and not m.startswith("keyplane.sdk")})
    assert outside == []


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    """The SDK's wheel, built from the repository, installed alone in a fresh environment
    (pip runs from the test's environment with ``--python``: the new one gets no pip)."""
    tmp = tmp_path_factory.mktemp("sdk-wheel")
    dist = tmp / "dist"
    _checked(_pip("wheel", "--no-deps", "--wheel-dir", str(dist), str(PROJECT)),
             "building the SDK's wheel")
    (wheel,) = dist.glob("keyplane_sdk-*.whl")
    env = tmp / "venv"
    venv.create(env, with_pip=False)
    python = env / "bin" / "python"
    _checked(_pip("--python", str(python), "install", "--no-input", str(wheel)),
             "installing the SDK's wheel")
    yield Installed(wheel, python)


@pytest.mark.slow
def test_the_wheel_ships_only_the_sdk(installed: Installed) -> None:
    names = zipfile.ZipFile(installed.wheel).namelist()
    code = [n for n in names if not n.startswith("keyplane_sdk-")]
    assert code and all(n.startswith("keyplane/sdk/") for n in code), code
    assert "keyplane/__init__.py" not in names  # a PEP 420 portion of the keyplane namespace
    assert "keyplane/sdk/py.typed" in names
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)


_INSPECT = """
import importlib.metadata as md, importlib.util, json, sys
import keyplane, keyplane.sdk
print(json.dumps({
    "requires": md.requires("keyplane-sdk"),
    "version": md.version("keyplane-sdk"),
    "sdk_version": keyplane.sdk._version.__version__,
    "namespace": getattr(keyplane, "__file__", None) is None,
    "exports": sorted(keyplane.sdk.__all__),
    "loaded": sorted(m for m in sys.modules if m.split(".")[0] == "keyplane"
                     and not m.startswith("keyplane.sdk")),
    "core": importlib.util.find_spec("keyplane.core") is not None,
    "others": sorted(d.metadata["Name"] for d in md.distributions()),
}))
"""


@pytest.mark.slow
def test_it_imports_alone_and_depends_on_httpx2_only(installed: Installed) -> None:
    done = subprocess.run([str(installed.python), "-c", _INSPECT], capture_output=True,
                          text=True, timeout=60, check=False, cwd=installed.wheel.parent)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    requires = sorted(r.replace('"', "'") for r in found["requires"])
    assert requires == ["django>=5.0; extra == 'django'", "httpx2>=2.16"]
    assert found["version"] == found["sdk_version"]
    assert found["namespace"]  # keyplane is the namespace, not the server's package
    assert found["loaded"] == ["keyplane"]  # nothing of the server was imported
    assert not found["core"]  # and nothing of it is installed
    import keyplane.sdk

    assert found["exports"] == sorted(keyplane.sdk.__all__)
    assert "keyplane" not in found["others"]
    for heavy in ("fastapi", "SQLAlchemy", "psycopg", "redis", "Authlib", "Django"):
        assert heavy.lower() not in {n.lower() for n in found["others"]}


_PRODUCT = """
import asyncio, json, sys
from keyplane.sdk import Client, KeyplaneMiddleware, requires

url, verifier, management = sys.argv[1:4]
with Client(url, token=management) as kp:
    key = kp.keys.create(name="wheel", scopes=["contacts:write"], require_tls=False)["key"]

async def product(scope, receive, send):
    who = requires("contacts:read").check(scope)
    body = json.dumps({"key_id": who["key_id"], "scopes": sorted(who["scopes"])}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})

async def get(app, headers):
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    await app({"type": "http", "method": "GET", "path": "/contacts", "scheme": "http",
               "client": ("127.0.0.1", 40000), "headers": headers}, receive, send)
    return sent[0]["status"], json.loads(sent[1]["body"])

async def main():
    app = KeyplaneMiddleware(product, url=url, token=verifier, changes="off")
    typo = key[:-1] + ("A" if key[-1] != "A" else "B")
    out = [await get(app, [(b"authorization", f"Bearer {key}".encode())]),
           await get(app, [(b"x-api-key", key.encode())]),
           await get(app, [(b"authorization", f"Bearer {typo}".encode())]),
           await get(app, [])]
    out.append(len(app.cache))
    await app.aclose()
    return out

print(json.dumps(asyncio.run(main())))
"""


@pytest.mark.slow
@pytest.mark.parametrize("database", ["sqlite"], indirect=True)  # the SDK, not the database
def test_the_installed_sdk_protects_an_app_with_a_real_keyplane(
        installed: Installed, server: RunningServer, verifier_key: str,
        tenant: Tenant) -> None:
    done = subprocess.run([str(installed.python), "-c", _PRODUCT, server.url, verifier_key,
                           tenant.management_key], capture_output=True, text=True,
                          timeout=60, check=False, cwd=installed.wheel.parent)
    assert done.returncode == 0, done.stderr
    by_bearer, by_header, typo, missing, cached = json.loads(done.stdout)
    assert by_bearer[0] == 200 and by_bearer[1]["scopes"] == ["contacts:read",
                                                               "contacts:write"]
    assert by_header == by_bearer  # the second request: from the verdict cache
    assert typo == [401, {"error": {"code": "invalid_key",
                                    "message": "the API key is not valid"}}]
    assert missing[0] == 401 and missing[1]["error"]["code"] == "missing_key"
    assert cached == 1
