"""The gateway's settings: one typed, frozen object read from the environment at start-up."""
from __future__ import annotations

import base64
import os
import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import phonenumbers

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
    provider_handle_ttl: int = 15 * 60
    """Seconds a provider page's URL handle works; the open page renews it well before (see launch.routes)."""
    presence_lease: int = 30
    """Seconds a gateway process's claim on its presence sockets lasts unrenewed (renewed every third of it).
    When a process dies without closing its sockets, another one writes their disconnects this long after."""
    log_level: str = "INFO"
    organisation_name: str = "your clinic"
    """Named in join-link messages ("Your video visit with <organisation> is ready"); no clinical detail."""
    time_zone: str = "UTC"
    """The organisation's IANA time zone (e.g. Europe/Madrid): dates and times shown to patients are in it."""
    organisation_logo: Path | None = None
    """A PNG or SVG file shown on patient pages, served from our own origin (never a remote image)."""
    smtp_host: str = "localhost"
    smtp_port: int = 25
    smtp_from: str = "visits@localhost"
    """The From address of join-link email."""
    smtp_starttls: bool = False
    """Upgrade the SMTP connection with STARTTLS (port 587); refuse to send if the server cannot."""
    smtp_tls: bool = False
    """Implicit TLS from the first byte (port 465)."""
    smtp_username: str | None = None
    smtp_password: str | None = field(default=None, repr=False)
    smtp_timeout: float = 10.0
    sms_provider: str = "none"
    """Where SMS goes: "none", "sink" (POST {to, body} to sms_sink_url, or keep in memory), "acs" or "twilio"."""
    sms_sink_url: str | None = None
    sms_from: str | None = None
    """The sending number in E.164 (for carriers such as Azure Communication Services)."""
    acs_endpoint: str | None = None
    """The Azure Communication Services resource, e.g. https://contoso.communication.azure.com."""
    acs_access_key: str | None = field(default=None, repr=False)
    """The resource's access key (base64), used for HMAC-SHA256 request signing."""
    twilio_account_sid: str | None = None
    twilio_auth_token: str | None = field(default=None, repr=False)
    """Twilio's auth token: HTTP basic authentication of our requests, and the key of X-Twilio-Signature."""
    twilio_api_url: str = "https://api.twilio.com"
    phone_region: str | None = None
    """The organisation's default region (ISO 3166, e.g. US): phone numbers written without a country code are
    read as dialled there. None: only international numbers (+ country code) are understood."""
    sms_help_text: str | None = None
    """The answer to HELP; by default names the organisation and says how to stop."""
    sms_webhook_secret: str | None = field(default=None, repr=False)
    """The `code` query parameter ACS's Event Grid subscription must carry to deliver inbound SMS (Event Grid
    signs nothing: this secret in the endpoint URL is how a delivery proves itself)."""
    sms_operation_poll_interval: float = 3.0
    """Seconds between looks at a carrier's long-running operation (phone number search, purchase, release)."""
    writeback_enabled: bool = True
    """Run the write-back worker in this process (any number of processes may)."""
    writeback_concurrency: int = 8
    """Write-backs in flight at once per FHIR server, in this process."""
    writeback_max_attempts: int = 10
    """Attempts at one visit's write-back before its events go to the dead letters."""
    writeback_backoff_base: float = 1.0
    writeback_backoff_max: float = 300.0
    writeback_lease_seconds: float = 60.0
    """How long a claimed visit stays with its worker; after a crash another process takes it after this."""
    writeback_poll_interval: float = 0.5
    writeback_request_timeout: float = 10.0
    writeback_max_conflict_rounds: int = 5
    """Re-reads and re-applies after 412 Precondition Failed before backing off."""
    reminder_enabled: bool = True
    """Run the appointment feed (MLLP listeners, FHIR polling) and the reminder sender in this process (any
    number of processes may: they share listening ports and claim messages through PostgreSQL)."""
    reminder_lease_seconds: float = 60.0
    """How long a claimed message stays with its process; after a crash another one takes it after this. Keep
    it above the longest send (SMTP and HTTP time limits), or a slow send may be overtaken (and deduplicated
    only by the carrier's idempotency key)."""
    reminder_poll_interval: float = 1.0
    """Seconds between this process's looks for due messages (and for feeds whose settings changed)."""
    reminder_concurrency: int = 8
    """Messages in flight at once in this process."""
    reminder_max_attempts: int = 5
    reminder_backoff: float = 30.0
    """Seconds before a message whose carrier failed for now is tried again (doubling each time)."""
    stun_urls: tuple[str, ...] = ()
    """STUN servers offered to the built-in video room's browsers, e.g. stun:turn.example.org:3478."""
    turn_urls: tuple[str, ...] = ()
    """TURN servers (coturn) for browsers that cannot reach each other directly."""
    turn_secret: bytes | None = field(default=None, repr=False)
    """coturn's static-auth-secret: TURN credentials are HMAC-SHA1 of a time-limited username with it."""
    turn_ttl: int = 3600
    """How long, in seconds, a TURN credential handed to a browser stays valid."""
    waiting_chat: bool = True
    """Clinicians and waiting patients or guests may exchange short text messages (never stored)."""
    ice_transport_policy: str = "all"
    """The room's RTCPeerConnection iceTransportPolicy: `all`, or `relay` (every call through TURN)."""
    metrics_token: str | None = field(default=None, repr=False)
    """Bearer token that Prometheus presents at /metrics; without one /metrics is not served at all."""
    portal_idle_timeout: int = 900
    """Seconds a portal session survives unused (HIPAA's automatic logoff; 15 minutes by default)."""
    portal_session_lifetime: int = 12 * 3600
    """Seconds a portal session lasts at most, however busy."""
    portal_sign_in_ttl: int = 600
    """Seconds a portal sign-in may spend at the identity provider."""
    idp_ca_file: Path | None = None
    """A CA bundle trusted for the organisations' identity providers, and for Microsoft Graph and Entra ID,
    instead of the system's (tests and the demo point these at sandbox doubles with a CA of their own)."""
    graph_url: str = "https://graph.microsoft.com"
    """Microsoft Graph's origin (https only; the national clouds have their own)."""
    entra_authority_host: str = "https://login.microsoftonline.com"
    """Entra ID's authority host (https only); a tenant's authority is <host>/<tenant id>."""
    graph_budget: float = 8.0
    """Seconds one Graph call may take in all, retries of 429 and 5xx included, unless its caller gives less."""
    visit_idle_end: float = 30 * 60
    """Seconds without anyone connected after a visit started (both sides present once) before it ends."""
    visit_grace: float = 60 * 60
    """Seconds after the end of a visit's appointment window before it ends, however busy."""
    visit_sweep_interval: float = 15.0
    """Seconds between this process's looks for visits that are due to end."""
    webhooks_enabled: bool = True
    """Run the webhook follower and delivery worker in this process (any number of processes may)."""
    webhook_retry_window: float = 24 * 3600
    """Seconds a webhook message is retried before its endpoint is disabled (Standard Webhooks: about a day)."""
    webhook_timeout: float = 10.0
    """Seconds one delivery may take, connection to last byte."""
    webhook_poll_interval: float = 1.0
    webhook_allow_http_loopback: bool = False
    """Tests only: deliver to http://127.0.0.1 (otherwise https only, and never to private addresses)."""

    graph_notification_key_pem: bytes | None = field(default=None, repr=False)
    """PEM RSA private key Graph encrypts Teams meeting notifications to (a certificate for it is made at start-up).
    Without it, no Teams meeting is subscribed to and presence in Teams visits is not live."""
    graph_subscription_lifetime: int = 3 * 24 * 3600 - 600
    """Seconds a Teams meeting's Graph subscription is asked to last (Graph allows at most three days)."""
    graph_renew_before: int = 12 * 3600
    """Renew a subscription when it has less than this many seconds left."""
    graph_worker_enabled: bool = True
    """Run the worker that decrypts Graph's queued notifications in this process (any number of processes may)."""
    graph_poll_interval: float = 1.0
    """Seconds between this process's looks for queued notifications, renewals and reconciliations due."""
    graph_reconcile_delay: float = 300.0
    """Seconds after a meeting's call ended (or notifications were missed) before its attendance report is read."""
    graph_report_retries: int = 6
    """Reads of an attendance report Graph has not produced yet (404, or nothing in it) before it is given up."""
    graph_report_backoff: float = 120.0
    """Seconds before the second read of an attendance report not produced yet; each wait after is twice the last."""

    def __post_init__(self) -> None:
        if len(self.secret_key) < 32:
            raise ConfigError("VISITGATE_SECRET_KEY must hold at least 32 bytes (base64)")
        if not self.public_url.startswith(("http://", "https://")) or self.public_url.endswith("/"):
            raise ConfigError("VISITGATE_PUBLIC_URL must be an origin like https://visits.example.org")
        if self.phone_region is not None and not _known_region(self.phone_region):
            raise ConfigError("VISITGATE_PHONE_REGION must be a two-letter region code like US or GB")
        if self.sms_webhook_secret is not None and len(self.sms_webhook_secret) < 16:
            raise ConfigError("VISITGATE_SMS_WEBHOOK_SECRET must hold at least 16 characters")
        try:
            zoneinfo.ZoneInfo(self.time_zone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
            raise ConfigError(f"VISITGATE_TIME_ZONE must be an IANA time zone name like Europe/Madrid, "
                              f"not {self.time_zone[:64]!r}") from exc

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
            organisation_name=env.get("VISITGATE_ORGANISATION_NAME", "your clinic"),
            time_zone=env.get("VISITGATE_TIME_ZONE", "").strip() or "UTC",
            organisation_logo=Path(env["VISITGATE_ORGANISATION_LOGO"].strip())
            if env.get("VISITGATE_ORGANISATION_LOGO", "").strip() else None,
            smtp_host=env.get("VISITGATE_SMTP_HOST", "localhost"),
            smtp_port=int(env.get("VISITGATE_SMTP_PORT", "25")),
            smtp_from=env.get("VISITGATE_SMTP_FROM", "visits@localhost"),
            smtp_starttls=_flag(env.get("VISITGATE_SMTP_STARTTLS", "")),
            smtp_tls=_flag(env.get("VISITGATE_SMTP_TLS", "")),
            smtp_username=env.get("VISITGATE_SMTP_USERNAME") or None,
            smtp_password=env.get("VISITGATE_SMTP_PASSWORD") or None,
            smtp_timeout=float(env.get("VISITGATE_SMTP_TIMEOUT", "10")),
            sms_provider=env.get("VISITGATE_SMS_PROVIDER", "none").strip().lower(),
            sms_sink_url=env.get("VISITGATE_SMS_SINK_URL") or None,
            sms_from=env.get("VISITGATE_SMS_FROM") or None,
            acs_endpoint=(env.get("VISITGATE_ACS_ENDPOINT") or "").strip().rstrip("/") or None,
            acs_access_key=env.get("VISITGATE_ACS_ACCESS_KEY") or None,
            twilio_account_sid=env.get("VISITGATE_TWILIO_ACCOUNT_SID", "").strip() or None,
            twilio_auth_token=env.get("VISITGATE_TWILIO_AUTH_TOKEN") or None,
            twilio_api_url=(env.get("VISITGATE_TWILIO_API_URL") or "https://api.twilio.com").strip().rstrip("/"),
            phone_region=env.get("VISITGATE_PHONE_REGION", "").strip().upper() or None,
            sms_help_text=env.get("VISITGATE_SMS_HELP_TEXT", "").strip() or None,
            sms_webhook_secret=env.get("VISITGATE_SMS_WEBHOOK_SECRET", "").strip() or None,
            sms_operation_poll_interval=_seconds(env, "VISITGATE_SMS_OPERATION_POLL_INTERVAL", 3, least=1),
            metrics_token=env.get("VISITGATE_METRICS_TOKEN", "").strip() or None,
            waiting_chat=_flag(env.get("VISITGATE_WAITING_CHAT", "").strip() or "on"),  # unset or empty: on
            provider_handle_ttl=_seconds(env, "VISITGATE_PROVIDER_HANDLE_TTL", 15 * 60, least=60),
            presence_lease=_seconds(env, "VISITGATE_PRESENCE_LEASE", 30, least=3),
            portal_idle_timeout=_seconds(env, "VISITGATE_PORTAL_IDLE_TIMEOUT", 900, least=60),
            portal_session_lifetime=_seconds(env, "VISITGATE_PORTAL_SESSION_LIFETIME", 12 * 3600, least=300),
            visit_idle_end=_seconds(env, "VISITGATE_VISIT_IDLE_END", 30 * 60, least=60),
            visit_grace=_seconds(env, "VISITGATE_VISIT_GRACE", 60 * 60, least=0),
            webhook_retry_window=_seconds(env, "VISITGATE_WEBHOOK_RETRY_WINDOW", 24 * 3600, least=1),
            webhook_allow_http_loopback=_flag(env.get("VISITGATE_WEBHOOK_ALLOW_HTTP_LOOPBACK", "")),
            graph_worker_enabled=_flag(env.get("VISITGATE_GRAPH_WORKER_ENABLED", "").strip() or "on"),
            graph_notification_key_pem=Path(env["VISITGATE_GRAPH_NOTIFICATION_KEY_FILE"].strip()).read_bytes()
            if env.get("VISITGATE_GRAPH_NOTIFICATION_KEY_FILE", "").strip() else None,
            idp_ca_file=Path(env["VISITGATE_IDP_CA_FILE"]) if env.get("VISITGATE_IDP_CA_FILE", "").strip() else None,
            graph_url=_https_origin(env, "VISITGATE_GRAPH_URL", "https://graph.microsoft.com"),
            entra_authority_host=_https_origin(env, "VISITGATE_ENTRA_AUTHORITY_HOST",
                                               "https://login.microsoftonline.com"),
            **_writeback_from_env(env),
            **_ice_from_env(env),
        )


def _known_region(region: str) -> bool:
    return region in phonenumbers.SUPPORTED_REGIONS


def _https_origin(env: Mapping[str, str], name: str, default: str) -> str:
    """An https origin from the environment (MSAL and Graph take nothing else), without a trailing slash."""
    raw = env.get(name, "").strip().rstrip("/") or default
    if not raw.startswith("https://") or "?" in raw or "#" in raw:
        raise ConfigError(f"{name} must be an https origin like {default}")
    return raw


def _seconds(env: Mapping[str, str], name: str, default: int, least: int) -> int:
    """A whole number of seconds from the environment, at least `least`."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise ConfigError(f"{name} must be a whole number of seconds") from exc
    if value < least:
        raise ConfigError(f"{name} must be at least {least} seconds")
    return value


def _flag(value: str) -> bool:
    """An environment switch: 1/true/yes/on, anything else is off."""
    return value.strip().lower() in ("1", "true", "yes", "on")


def _writeback_from_env(env: Mapping[str, str]) -> dict[str, Any]:
    """Write-back and reminder settings given as VISITGATE_WRITEBACK_<NAME> and VISITGATE_REMINDER_<NAME>; absent
    ones keep their defaults."""
    found: dict[str, Any] = {}
    for f in fields(Settings):
        raw = env.get(f"VISITGATE_{f.name.upper()}", "").strip()
        if not f.name.startswith(("writeback_", "reminder_")) or not raw:
            continue
        kind: Any = type(f.default)  # every write-back field has a default of its own type
        try:
            found[f.name] = _flag(raw) if kind is bool else kind(raw)
        except ValueError as exc:
            raise ConfigError(f"VISITGATE_{f.name.upper()} must be a {kind.__name__}") from exc
    return found


ICE_TRANSPORT_POLICIES = ("all", "relay")


def _ice_from_env(env: Mapping[str, str]) -> dict[str, Any]:
    """The video room's STUN and TURN settings; TURN servers without their shared secret stop start-up."""
    turn_urls = tuple(env.get("VISITGATE_TURN_URLS", "").split())
    secret = env.get("VISITGATE_TURN_SECRET", "").strip()
    if turn_urls and not secret:
        raise ConfigError("VISITGATE_TURN_URLS is set but VISITGATE_TURN_SECRET (coturn's static-auth-secret) "
                          "is not")
    try:
        ttl = int(env.get("VISITGATE_TURN_TTL", "3600"))
    except ValueError as exc:
        raise ConfigError("VISITGATE_TURN_TTL must be a whole number of seconds") from exc
    if ttl <= 0:
        raise ConfigError("VISITGATE_TURN_TTL must be a positive number of seconds")
    policy = env.get("VISITGATE_ICE_TRANSPORT_POLICY", "all").strip() or "all"
    if policy not in ICE_TRANSPORT_POLICIES:
        raise ConfigError("VISITGATE_ICE_TRANSPORT_POLICY must be `all` or `relay`")
    if policy == "relay" and not turn_urls:
        raise ConfigError("VISITGATE_ICE_TRANSPORT_POLICY is `relay` but VISITGATE_TURN_URLS names no TURN server")
    return {"stun_urls": tuple(env.get("VISITGATE_STUN_URLS", "").split()), "turn_urls": turn_urls,
            "turn_secret": secret.encode() if secret else None, "turn_ttl": ttl, "ice_transport_policy": policy}
