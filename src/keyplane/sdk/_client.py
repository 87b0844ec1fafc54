"""The management client for Keyplane's ``/v1`` API, sync (:class:`Client`) and async
(:class:`AsyncClient`), over httpx2.

    with Client("http://127.0.0.1:8080", token=MANAGEMENT_KEY) as kp:
        issued = kp.keys.create(name="zapier", scopes=["contacts:read"])
        kp.keys.revoke(issued["id"])

    async with AsyncClient(url, token=key) as kp:
        page = await kp.keys.list(q="zapier")

Every call returns the decoded JSON object of the response (``None`` for 204) and raises the
errors of :mod:`keyplane.sdk._exceptions`. Pass ``transport=httpx2.MockTransport(handler)`` to
test code that uses the client without a network. Operator credentials act on one tenant with
``tenant_id=`` (or :meth:`Client.for_tenant`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx2

from keyplane.sdk._exceptions import APIConnectionError, error_for
from keyplane.sdk._version import USER_AGENT

__all__ = ["NOT_GIVEN", "AsyncClient", "Client"]

R = TypeVar("R")
Json = Any


class _NotGiven:
    """A field left out of the request (``None`` is a value: e.g. a key that never expires)."""

    def __repr__(self) -> str:
        return "NOT_GIVEN"

    def __bool__(self) -> bool:
        return False


NOT_GIVEN: Any = _NotGiven()

# (method, path, query params, JSON body, tenant-scoped?) -> the response, or an awaitable of it
Send = Callable[[str, str, "dict[str, Any] | None", Any, bool], R]


def _fields(**values: Any) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in values.items()
            if v is not NOT_GIVEN}


def _params(**values: Any) -> dict[str, Any] | None:
    out = {k: v for k, v in values.items() if v is not None and v is not NOT_GIVEN}
    return out or None


def _seg(value: str) -> str:
    return quote(str(value), safe="")


class _Resource(Generic[R]):
    def __init__(self, send: Send[R]) -> None:
        self._send = send


class Keys(_Resource[R]):
    """``/v1/keys`` (or ``/v1/operator/keys`` for the operator's own keys)."""

    def __init__(self, send: Send[R], path: str = "/v1/keys", scoped: bool = True) -> None:
        super().__init__(send)
        self._path = path
        self._scoped = scoped

    def _call(self, method: str, suffix: str = "", params: dict[str, Any] | None = None,
              body: Any = None) -> R:
        return self._send(method, self._path + suffix, params, body, self._scoped)

    def create(self, *, name: str, scopes: Sequence[str] = (), description: Any = NOT_GIVEN,
               owner_id: Any = NOT_GIVEN, expires_in_days: Any = NOT_GIVEN,
               allowed_ips: Any = NOT_GIVEN, require_tls: Any = NOT_GIVEN,
               ratelimit: Any = NOT_GIVEN, meta: Any = NOT_GIVEN,
               remaining: Any = NOT_GIVEN) -> R:
        """Create a key; the response's ``key`` is the secret, returned this once only.
        ``expires_in_days=None`` asks for a key that never expires (if the policy allows);
        ``ratelimit={"limit": N, "window_seconds": S}``; ``remaining``: a usage quota."""
        return self._call("POST", body=_fields(
            name=name, scopes=list(scopes), description=description, owner_id=owner_id,
            expires_in_days=expires_in_days, allowed_ips=allowed_ips, require_tls=require_tls,
            ratelimit=ratelimit, meta=meta, remaining=remaining))

    def list(self, *, owner_id: str | None = None, enabled: bool | None = None,
             q: str | None = None, limit: int | None = None, cursor: str | None = None) -> R:
        """One page: ``{"items": [...], "next_cursor": ...}`` (see ``Client.paginate``)."""
        return self._call("GET", params=_params(owner_id=owner_id, enabled=enabled, q=q,
                                                limit=limit, cursor=cursor))

    def get(self, key_id: str) -> R:
        return self._call("GET", f"/{_seg(key_id)}")

    def update(self, key_id: str, *, name: Any = NOT_GIVEN, description: Any = NOT_GIVEN,
               scopes: Any = NOT_GIVEN, allowed_ips: Any = NOT_GIVEN,
               require_tls: Any = NOT_GIVEN, enabled: Any = NOT_GIVEN,
               ratelimit: Any = NOT_GIVEN, meta: Any = NOT_GIVEN,
               remaining: Any = NOT_GIVEN) -> R:
        """Change fields; takes effect on every verifier within the invalidation bound."""
        return self._call("PATCH", f"/{_seg(key_id)}", body=_fields(
            name=name, description=description, scopes=scopes, allowed_ips=allowed_ips,
            require_tls=require_tls, enabled=enabled, ratelimit=ratelimit, meta=meta,
            remaining=remaining))

    def revoke(self, key_id: str) -> R:
        """Revoke: immediate and irreversible."""
        return self._call("DELETE", f"/{_seg(key_id)}")

    def rotate(self, key_id: str, *, grace_period_seconds: Any = NOT_GIVEN) -> R:
        """A new secret; the old one works for ``grace_period_seconds`` (0: dies now)."""
        return self._call("POST", f"/{_seg(key_id)}/rotate",
                          body=_fields(grace_period_seconds=grace_period_seconds))

    def duplicate(self, key_id: str, *, name: Any = NOT_GIVEN) -> R:
        return self._call("POST", f"/{_seg(key_id)}/duplicate", body=_fields(name=name))

    def usage(self, key_id: str, **params: Any) -> R:
        """Usage counts by hour and outcome."""
        return self._call("GET", f"/{_seg(key_id)}/usage", params=_params(**params))


class _Crud(_Resource[R]):
    path = ""
    scoped = True

    def _call(self, method: str, suffix: str = "", params: dict[str, Any] | None = None,
              body: Any = None) -> R:
        return self._send(method, self.path + suffix, params, body, self.scoped)

    def list(self, *, limit: int | None = None, cursor: str | None = None) -> R:
        return self._call("GET", params=_params(limit=limit, cursor=cursor))

    def get(self, object_id: str) -> R:
        return self._call("GET", f"/{_seg(object_id)}")

    def update(self, object_id: str, **fields: Any) -> R:
        return self._call("PATCH", f"/{_seg(object_id)}", body=_fields(**fields))


class Tenants(_Crud[R]):
    """``/v1/tenants`` (operator)."""

    path = "/v1/tenants"
    scoped = False

    def create(self, *, name: str, policy: Any = NOT_GIVEN) -> R:
        return self._call("POST", body=_fields(name=name, policy=policy))


class Members(_Crud[R]):
    """``/v1/members``: people who sign in."""

    path = "/v1/members"

    def create(self, *, email: str, role: Any = NOT_GIVEN, name: Any = NOT_GIVEN,
               password: Any = NOT_GIVEN, group_ids: Any = NOT_GIVEN) -> R:
        return self._call("POST", body=_fields(email=email, role=role, name=name,
                                               password=password, group_ids=group_ids))

    def delete(self, principal_id: str) -> R:
        """Remove the principal and revoke its keys."""
        return self._call("DELETE", f"/{_seg(principal_id)}")


class ServiceAccounts(Members[R]):
    """``/v1/service-accounts``: API-only principals that own keys."""

    path = "/v1/service-accounts"

    def create(self, *, name: str, role: Any = NOT_GIVEN,  # type: ignore[override]
               group_ids: Any = NOT_GIVEN) -> R:
        return self._call("POST", body=_fields(name=name, role=role, group_ids=group_ids))


class Groups(_Crud[R]):
    """``/v1/groups``: data-access groups."""

    path = "/v1/groups"

    def create(self, *, name: str, scopes: Sequence[str] = (),
               description: Any = NOT_GIVEN) -> R:
        return self._call("POST", body=_fields(name=name, scopes=list(scopes),
                                               description=description))

    def delete(self, group_id: str) -> R:
        return self._call("DELETE", f"/{_seg(group_id)}")


class Scopes(_Resource[R]):
    """``/v1/scopes``: the operator's scope catalogue."""

    def list(self) -> R:
        return self._send("GET", "/v1/scopes", None, None, False)

    def put(self, name: str, *, description: str) -> R:
        return self._send("PUT", f"/v1/scopes/{_seg(name)}", None,
                          {"description": description}, False)

    def delete(self, name: str) -> R:
        return self._send("DELETE", f"/v1/scopes/{_seg(name)}", None, None, False)


class AuditEvents(_Resource[R]):
    """``/v1/audit-events``, newest first."""

    def list(self, *, action: str | None = None, limit: int | None = None,
             cursor: str | None = None) -> R:
        return self._send("GET", "/v1/audit-events",
                          _params(action=action, limit=limit, cursor=cursor), None, True)


def _decode(response: httpx2.Response) -> Json:
    if (response.status_code == 204 or not response.content) and response.is_success:
        return None
    body: Any = None
    try:
        body = response.json()
    except ValueError:
        body = None
    if not response.is_success:
        raise error_for(response.status_code, body, response.headers.get("retry-after"))
    return body


def _headers(token: str, extra: Mapping[str, str] | None) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {token}", "User-Agent": USER_AGENT,
               "Accept": "application/json"}
    headers.update(extra or {})
    return headers


class _Base(Generic[R]):
    keys: Keys[R]
    operator_keys: Keys[R]
    tenants: Tenants[R]
    members: Members[R]
    service_accounts: ServiceAccounts[R]
    groups: Groups[R]
    scopes: Scopes[R]
    audit_events: AuditEvents[R]

    def __init__(self, tenant_id: str | None) -> None:
        self.tenant_id = tenant_id
        send: Send[R] = self._send
        self.keys = Keys(send)
        self.operator_keys = Keys(send, "/v1/operator/keys", scoped=False)
        self.tenants = Tenants(send)
        self.members = Members(send)
        self.service_accounts = ServiceAccounts(send)
        self.groups = Groups(send)
        self.scopes = Scopes(send)
        self.audit_events = AuditEvents(send)

    def _send(self, method: str, path: str, params: dict[str, Any] | None, body: Any,
              scoped: bool) -> R:
        raise NotImplementedError

    def _query(self, params: dict[str, Any] | None, scoped: bool) -> dict[str, Any] | None:
        if scoped and self.tenant_id is not None:
            params = {**(params or {}), "tenant_id": self.tenant_id}
        if params:
            params = {k: (str(v).lower() if isinstance(v, bool) else v)
                      for k, v in params.items()}
        return params

    def verify(self, key: str, *, scopes: Sequence[str] = (), ip: str | None = None,
               tls: bool | None = None) -> R:
        """``POST /v1/verify`` (needs ``keys:verify``): ``{"valid", "code", "key_id", ...}``."""
        body: dict[str, Any] = {"key": key, "scopes": list(scopes)}
        if ip is not None:
            body["ip"] = ip
        if tls is not None:
            body["tls"] = tls
        return self._send("POST", "/v1/verify", None, body, False)

    def changes(self, *, after: int | None = None, wait: float | None = None) -> R:
        """One long poll of the change stream: ``{"items": [...], "position": N}``."""
        return self._send("GET", "/v1/changes", _params(after=after, wait=wait), None, False)


class Client(_Base[Json]):
    """Synchronous client. Use it as a context manager, or call :meth:`close`."""

    def __init__(self, url: str, token: str, *, tenant_id: str | None = None,
                 timeout: float | httpx2.Timeout = 10.0,
                 transport: httpx2.BaseTransport | None = None,
                 headers: Mapping[str, str] | None = None,
                 _http: httpx2.Client | None = None) -> None:
        super().__init__(tenant_id)
        self._owns_http = _http is None
        self._http = _http or httpx2.Client(
            base_url=url.rstrip("/"), headers=_headers(token, headers), timeout=timeout,
            transport=transport,
        )

    def for_tenant(self, tenant_id: str) -> Client:
        """A client acting on ``tenant_id`` (operator credentials), sharing connections."""
        return Client("", "", tenant_id=tenant_id, _http=self._http)

    def _send(self, method: str, path: str, params: dict[str, Any] | None, body: Any,
              scoped: bool) -> Json:
        try:
            response = self._http.request(method, path, params=self._query(params, scoped),
                                          json=body)
        except httpx2.RequestError as exc:
            raise APIConnectionError(f"Keyplane is unreachable: {type(exc).__name__}") from exc
        return _decode(response)

    def paginate(self, list_call: Callable[..., Json], /, **params: Any) -> Iterator[Json]:
        """Every item of a list call, following ``next_cursor``:
        ``for key in kp.paginate(kp.keys.list, owner_id=...)``."""
        cursor = None
        while True:
            page = list_call(cursor=cursor, **params)
            yield from page["items"]
            cursor = page.get("next_cursor")
            if not cursor:
                return

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient(_Base[Awaitable[Json]]):
    """Asynchronous client: every call is awaited. ``async with AsyncClient(...) as kp``."""

    def __init__(self, url: str, token: str, *, tenant_id: str | None = None,
                 timeout: float | httpx2.Timeout = 10.0,
                 transport: httpx2.AsyncBaseTransport | None = None,
                 headers: Mapping[str, str] | None = None,
                 _http: httpx2.AsyncClient | None = None) -> None:
        super().__init__(tenant_id)
        self._owns_http = _http is None
        self._http = _http or httpx2.AsyncClient(
            base_url=url.rstrip("/"), headers=_headers(token, headers), timeout=timeout,
            transport=transport,
        )

    def for_tenant(self, tenant_id: str) -> AsyncClient:
        return AsyncClient("", "", tenant_id=tenant_id, _http=self._http)

    async def _request(self, method: str, path: str, params: dict[str, Any] | None,
                       body: Any, scoped: bool) -> Json:
        try:
            response = await self._http.request(
                method, path, params=self._query(params, scoped), json=body
            )
        except httpx2.RequestError as exc:
            raise APIConnectionError(f"Keyplane is unreachable: {type(exc).__name__}") from exc
        return _decode(response)

    def _send(self, method: str, path: str, params: dict[str, Any] | None, body: Any,
              scoped: bool) -> Awaitable[Json]:
        return self._request(method, path, params, body, scoped)

    async def paginate(self, list_call: Callable[..., Awaitable[Json]], /,
                       **params: Any) -> AsyncIterator[Json]:
        cursor = None
        while True:
            page = await list_call(cursor=cursor, **params)
            for item in page["items"]:
                yield item
            cursor = page.get("next_cursor")
            if not cursor:
                return

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
