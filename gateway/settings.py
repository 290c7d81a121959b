"""The gateway's settings: one typed, frozen object read from the environment at start-up."""
from __future__ import annotations

import base64
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError


@dataclass(frozen=True)
class Settings:
    """Everything the gateway needs to run; tests build their own."""

    public_url: str
    """The gateway's external origin (scheme://host[:port]), used for redirect URIs and the JWKS URL."""
    secret_key: bytes = field(repr=False)
    """>= 32 random bytes; session handles and FHIR identifiers are sealed with keys derived from it."""
    signing_key_pem: bytes = field(repr=False)
    """PEM RSA private key for private_key_jwt client assertions, published at /.well-known/jwks.json."""
    database_url: str | None = None
    """PostgreSQL DSN; None runs an embedded PostgreSQL in data_dir."""
    data_dir: Path = Path(".visitgate")
    host: str = "127.0.0.1"
    port: int = 8080
    frame_ancestors: tuple[str, ...] = ()
    """EHR origins allowed to embed the provider view in an iframe (CSP frame-ancestors)."""
    http_timeout: float = 10.0
    db_pool_max: int = 10
    launch_state_ttl: int = 600
    provider_session_ttl: int = 12 * 3600
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        if len(self.secret_key) < 32:
            raise ConfigError("VISITGATE_SECRET_KEY must hold at least 32 bytes (base64)")
        if not self.public_url.startswith(("http://", "https://")) or self.public_url.endswith("/"):
            raise ConfigError("VISITGATE_PUBLIC_URL must be an origin like https://visits.example.org")

    @property
    def redirect_uri(self) -> str:
        """The SMART redirect URI registered in the EHR."""
        return f"{self.public_url}/launch/callback"

    @property
    def jwks_url(self) -> str:
        """Where EHRs fetch our public keys for private_key_jwt."""
        return f"{self.public_url}/.well-known/jwks.json"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        """Read settings from environment variables; a missing required one stops start-up by name."""
        env = os.environ if env is None else env
        required = ["VISITGATE_PUBLIC_URL", "VISITGATE_SECRET_KEY"]
        if not env.get("VISITGATE_SIGNING_KEY_FILE"):
            required.append("VISITGATE_SIGNING_KEY")
        missing = [name for name in required if not env.get(name, "").strip()]
        if missing:
            raise ConfigError(f"required settings not set: {', '.join(missing)}")
        key_file = env.get("VISITGATE_SIGNING_KEY_FILE")
        pem = Path(key_file).read_bytes() if key_file else env["VISITGATE_SIGNING_KEY"].encode()
        try:
            secret = base64.b64decode(env["VISITGATE_SECRET_KEY"].strip(), validate=True)
        except ValueError as exc:
            raise ConfigError("VISITGATE_SECRET_KEY must be base64") from exc
        return cls(
            public_url=env["VISITGATE_PUBLIC_URL"].strip().rstrip("/"),
            secret_key=secret,
            signing_key_pem=pem,
            database_url=env.get("DATABASE_URL") or None,
            data_dir=Path(env.get("VISITGATE_DATA_DIR", ".visitgate")),
            host=env.get("VISITGATE_HOST", "0.0.0.0"),
            port=int(env.get("VISITGATE_PORT", "8080")),
            frame_ancestors=tuple(env.get("VISITGATE_FRAME_ANCESTORS", "").split()),
            http_timeout=float(env.get("VISITGATE_HTTP_TIMEOUT", "10")),
            db_pool_max=int(env.get("VISITGATE_DB_POOL_MAX", "10")),
            log_level=env.get("VISITGATE_LOG_LEVEL", "INFO"),
        )
