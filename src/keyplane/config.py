"""Typed settings, read from ``KEYPLANE_*`` environment variables (or passed explicitly).

Nothing is built at import: ``Settings()`` is created once by the entry point and passed down.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from keyplane.core.errors import KeyplaneError
from keyplane.core.policy import normalise_networks

HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}$")  # an HTTP header token


def _split(value: object) -> object:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return value


class Settings(BaseSettings):
    # settings hold secrets (peppers, the SMTP password): an error never echoes an input
    model_config = SettingsConfigDict(env_prefix="KEYPLANE_", extra="ignore",
                                      hide_input_in_errors=True)

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
    route_map: Path | None = Field(
        default=None, description='/v1/forward-auth\'s TOML route map, "METHOD /path/*" = '
        '["scope", …]; read once at start (none: every route is refused)')
    cache_size: int = 100_000
    cache_ttl_seconds: float = 60.0
    verify_answer_cache_size: int = Field(
        default=10_000, ge=0,
        description="Encoded POST /v1/verify answers remembered per worker (0: none)")
    usage_flush_seconds: float = 5.0
    db_outage_grace_seconds: float = Field(
        default=30.0, ge=0, le=3600,
        description="While the database is unreachable, cached verifications are served for "
        "this long after the loss was first seen; then verification fails closed (503) until "
        "the database answers again (0: fail closed at once)")
    max_body_bytes: int = Field(
        default=1_048_576, ge=1024,
        description="Largest request body any route accepts (413 beyond), checked while the "
        "body is read, before parsing and authentication")
    request_head_timeout_seconds: float = Field(
        default=10.0, gt=0, le=300,
        description="`keyplane serve` answers 408 and closes a connection whose request line "
        "and headers have not all arrived this long after it opened (slow-loris clients)")
    # cross-worker invalidation, rate limits, change stream (see cache/redis_bus.py)
    redis_prefix: str = Field(default="keyplane", pattern=r"^[A-Za-z0-9_.:-]{1,64}$",
                              description="Prefix of Redis keys and of the pub/sub channel")
    redis_timeout_seconds: float = Field(default=0.5, gt=0)
    change_poll_seconds: float = Field(default=0.5, gt=0)
    change_poll_redis_seconds: float = Field(default=5.0, gt=0)
    degraded_cache_ttl_seconds: float = Field(default=1.0, gt=0)
    change_notify: bool = Field(
        default=True, description="On PostgreSQL without Redis, hear of every committed change "
        "through LISTEN/NOTIFY (milliseconds) instead of the change-log poll alone")
    failure_limit: int = Field(default=20, ge=1)
    failure_window_seconds: int = Field(default=60, ge=1, le=86400)
    sse_keepalive_seconds: float = Field(default=15.0, gt=0)
    # connected apps (OAuth 2.0) and member sign-in; the issuer is base_url
    session_lifetime_seconds: int = Field(default=8 * 3600, ge=60, le=30 * 86400)
    oauth_access_token_seconds: int = Field(default=3600, ge=60, le=86400)
    oauth_code_seconds: int = Field(default=60, ge=5, le=600)
    oauth_refresh_token_days: int = Field(
        default=365, ge=1, le=3650,
        description="Absolute lifetime of a connection's refresh tokens; rotation never "
        "extends it")
    signin_limit_per_account: str = Field(default="5/15 minutes",
                                          description="Failed sign-ins per email (limits syntax)")
    signin_limit_per_ip: str = Field(default="30/15 minutes",
                                     description="Failed sign-ins per client address")
    # secret-scanning partner reports (GitHub's format): where the code host's public keys are
    secret_scanning_keys_file: Path | None = Field(
        default=None, description='A JSON file {"public_keys": [{"key_identifier", "key", '
        '"is_current"}]}; read on first use, re-read hourly and on an unknown key id')
    secret_scanning_keys_url: str | None = Field(
        default=None, description="Or a URL serving that document, e.g. "
        "https://api.github.com/meta/public_keys/secret_scanning; cached, refreshed hourly "
        "and on an unknown key id (at most once a minute)")
    # webhooks (services/webhooks.py, services/delivery.py, outbound.py)
    webhook_allow_private_targets: bool = Field(
        default=False, description="Allow webhook URLs on private, loopback and link-local "
        "addresses, and plain http (development and tests only)")
    webhook_worker: bool = Field(default=True, description="Deliver webhooks from `keyplane "
                                 "serve` processes (false: only `keyplane worker` does)")
    webhook_timeout_seconds: float = Field(default=10.0, gt=0, le=60)
    webhook_max_response_bytes: int = Field(default=65536, ge=0, le=10 * 1024 * 1024)
    webhook_retry_window_seconds: int = Field(
        default=86400, ge=60, description="How long a failing delivery is retried")
    webhook_retry_base_seconds: float = Field(default=5.0, gt=0)
    webhook_retry_max_seconds: float = Field(default=3600.0, gt=0)
    webhook_disable_after_seconds: int = Field(
        default=86400, ge=60, description="Disable an endpoint whose every attempt failed "
        "for this long")
    webhook_lease_seconds: float = Field(
        default=60.0, gt=0, description="A claimed delivery is someone else's to send again "
        "after this long (must exceed the timeout)")
    webhook_concurrency: int = Field(default=8, ge=1, le=256)
    webhook_poll_seconds: float = Field(default=1.0, gt=0)
    hygiene_interval_seconds: float = Field(
        default=3600.0, ge=0, le=86400 * 7,
        description="How often the unused-key policy (revoke_unused_after_days) runs: every "
        "instance checks once a minute and one of them runs it per interval (a database "
        "lease); 0: never from serve (run `keyplane hygiene run` from cron instead)")
    expiry_interval_seconds: float = Field(
        default=900.0, ge=0, le=86400,
        description="How often expiry reminders (key.expiring 14, 7 and 1 days ahead, "
        "key.expired) are looked for: every instance checks once a minute and one of them "
        "scans per interval; each reminder is sent once whatever runs it. 0: not from this "
        "process")
    denied_burst_limit: int = Field(
        default=50, ge=0, le=10_000_000, description="key.denied_burst is sent when one key is "
        "refused more than this many times within denied_burst_window_seconds (0: never)")
    denied_burst_window_seconds: int = Field(default=300, ge=10, le=86400)
    known_networks_per_key: int = Field(
        default=20, ge=1, le=1000, description="Networks (IPv4 /24, IPv6 /64) remembered per "
        "key; a valid use from another one sends key.used_from_new_ip")
    webhook_retention_days: int = Field(
        default=30, ge=2, le=3650, description="Finished deliveries (and their events) are "
        "kept this long for GET …/deliveries and redelivery")
    metrics_open_on_loopback: bool = Field(
        default=True, description="GET /metrics answers loopback clients (not through a "
        "proxy) without a credential; everyone else needs one with platform:read")
    smtp_url: SecretStr | None = Field(
        default=None, description="Mail server for invitations, password resets and reminders: "
        "smtp://host:25, smtp+starttls://user:pass@host:587 or smtps://user:pass@host:465")
    mail_from: str = Field(default="Keyplane <keyplane@localhost>", min_length=3, max_length=200,
                           description="The From address of Keyplane's emails")
    # partner developers (console accounts that register OAuth apps for operator approval)
    partner_signup: Literal["open", "invite", "closed"] = Field(
        default="invite", description="Who may create a partner developer account: anyone "
        "with a link mailed to their address (open: needs KEYPLANE_SMTP_URL), only with a "
        "link the operator's staff made (invite), or nobody (closed)")
    partner_invite_days: int = Field(default=7, ge=1, le=90,
                                     description="How long a partner invitation link works")
    db_pool_size: int = 10
    log_level: str = "info"
    log_format: Literal["json", "text"] = Field(
        default="json", description="json: one JSON object per line (time, level, logger, "
        "message, request_id; the access log adds method, path, status, duration_ms, client) "
        "for a log pipeline; text: one readable line")
    access_log: bool = Field(default=True, description="One line per HTTP request")
    demo: bool = False

    _split_lists = field_validator("trusted_proxies", "legacy_headers", mode="before")(_split)

    @field_validator("trusted_proxies")
    @classmethod
    def _strict_networks(cls, value: list[str]) -> list[str]:
        """The CIDR rules every allowlist follows: no host bits, leading zeros or zone ids."""
        try:
            return normalise_networks(value, "trusted_proxies")
        except KeyplaneError as exc:
            raise ValueError(exc.message) from None

    @field_validator("smtp_url")
    @classmethod
    def _smtp_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and value.get_secret_value():
            from keyplane.mail import parse_smtp_url

            parse_smtp_url(value.get_secret_value())  # ValueError names the problem
        return value or None

    @field_validator("legacy_headers")
    @classmethod
    def _header_names(cls, value: list[str]) -> list[str]:
        for name in value:
            if not HEADER_NAME.match(name):
                raise ValueError(f"KEYPLANE_LEGACY_HEADERS: {name!r} is not an HTTP header name")
        return value

    @model_validator(mode="after")
    def _open_signup_mails_links(self) -> Settings:
        if self.partner_signup == "open" and self.smtp_url is None:
            raise ValueError("KEYPLANE_PARTNER_SIGNUP=open needs KEYPLANE_SMTP_URL: open "
                             "sign-up mails a link to prove the address (use invite without "
                             "a mail server)")
        return self

    @model_validator(mode="after")
    def _lease_outlives_attempt(self) -> Settings:
        if self.webhook_lease_seconds < 3 * self.webhook_timeout_seconds:
            raise ValueError("KEYPLANE_WEBHOOK_LEASE_SECONDS must be at least three times "
                             "KEYPLANE_WEBHOOK_TIMEOUT_SECONDS: a claim must outlive a wait in "
                             "the queue and its attempt")
        return self

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'keyplane.db').resolve()}"

    @property
    def base_url(self) -> str:
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")
