"""The verification cache drops exactly the access tokens of a revoked connection or of a
suspended app, and keeps everything else."""

from __future__ import annotations

from keyplane.cache.local import VerificationCache
from keyplane.core.policy import Snapshot


def token(digest_owner: str, grant: str, app: str) -> Snapshot:
    return Snapshot(key_id=grant, tenant_id="loc_1", owner_id=digest_owner, name="Zapier",
                    scopes=frozenset({"contacts:read"}), expires_at=None, kind="access_token",
                    client_id="cli_1", meta={"grant_id": grant, "app_id": app})


def filled() -> VerificationCache:
    cache = VerificationCache(100, ttl=60)
    cache.put("d1", token("usr_1", "con_1", "app_1"), cache.generation, None)
    cache.put("d2", token("usr_1", "con_1", "app_1"), cache.generation, None)
    cache.put("d3", token("usr_2", "con_2", "app_1"), cache.generation, None)
    cache.put("d4", token("usr_2", "con_3", "app_2"), cache.generation, None)
    cache.put("k1", Snapshot(key_id="key_1", tenant_id="loc_1", owner_id="usr_1", name="k",
                             scopes=frozenset(), expires_at=None), cache.generation, None)
    return cache


def cached(cache: VerificationCache) -> set[str]:
    return {d for d in ("d1", "d2", "d3", "d4", "k1") if isinstance(cache.get(d), Snapshot)}


def test_a_revoked_connection_drops_only_its_tokens() -> None:
    cache = filled()
    cache.invalidate("connection", "con_1")
    assert cached(cache) == {"d3", "d4", "k1"}


def test_a_suspended_app_drops_the_tokens_of_all_its_connections() -> None:
    cache = filled()
    cache.invalidate("app", "app_1")
    assert cached(cache) == {"d4", "k1"}


def test_a_read_that_started_before_the_revocation_is_not_cached() -> None:
    cache = VerificationCache(100, ttl=60)
    generation = cache.generation
    cache.invalidate("connection", "con_1")
    cache.put("d1", token("usr_1", "con_1", "app_1"), generation, None)
    assert cache.get("d1") is None
