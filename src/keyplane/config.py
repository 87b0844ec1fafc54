"""Typed settings, read from ``KEYPLANE_*`` environment variables (or passed explicitly).

Nothing is built at import: ``Settings()`` is created once by the entry point and passed down.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


def _split(value: object) -> object:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KEYPLANE_", extra="ignore")

    data_dir: Path = Path("data")
    database_url: str | None = None
    redis_url: str | None = None
    host: str = "127.0.0.1"
    port: int = 8080
    public_url: str | None = Field(
        default=None, description="Public base URL, e.g. https://keys.example.com (OAuth issuer)"
    )
    key_prefix: str = "kp"
    peppers: SecretStr | None = Field(
        default=None,
        description="Comma-separated id:base64 peppers, current first. Default: a file in "
        "data_dir created on first run.",
    )
    trusted_proxies: Annotated[list[str], NoDecode] = Field(default_factory=list)
    legacy_headers: Annotated[list[str], NoDecode] = Field(default_factory=list)
    scopes_file: Path | None = None
    cache_size: int = 100_000
    cache_ttl_seconds: float = 60.0
    usage_flush_seconds: float = 5.0
    db_pool_size: int = 10
    log_level: str = "info"
    demo: bool = False

    _split_lists = field_validator("trusted_proxies", "legacy_headers", mode="before")(_split)

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'keyplane.db').resolve()}"

    @property
    def base_url(self) -> str:
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")
