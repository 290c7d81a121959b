"""Settings of the sandbox EHR and the switches that make it misbehave on purpose.

`SandboxSettings` is fixed when the application is built; `Faults` is the one mutable object, kept in
`app[FAULTS]`, that tests and benchmarks flip to see how the gateway copes with a failing EHR.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any
from urllib.parse import urlsplit

AUTH_METHODS = ("none", "client_secret_basic", "private_key_jwt")
ID_TOKEN_FAULTS = ("bad_signature", "wrong_aud", "wrong_nonce", "expired", "wrong_iss", "malformed")


@dataclass(frozen=True)
class SandboxClient:
    """One registered SMART client, as an EHR analyst would have entered it in the EHR's build."""

    client_id: str
    redirect_uris: tuple[str, ...]
    auth_method: str  # "none" | "client_secret_basic" | "private_key_jwt"
    client_secret: str | None = None
    jwks_url: str | None = None  # where the client's public keys are (for private_key_jwt)

    def __post_init__(self) -> None:
        if self.auth_method not in AUTH_METHODS:
            raise ValueError(f"client {self.client_id!r}: auth_method must be one of {AUTH_METHODS}")
        if self.auth_method == "client_secret_basic" and not self.client_secret:
            raise ValueError(f"client {self.client_id!r}: client_secret_basic needs a client_secret")
        if self.auth_method == "private_key_jwt" and not self.jwks_url:
            raise ValueError(f"client {self.client_id!r}: private_key_jwt needs a jwks_url")
        # A list given by a caller would make the frozen dataclass unhashable and mutable underneath.
        object.__setattr__(self, "redirect_uris", tuple(self.redirect_uris))

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SandboxClient:
        """Build a client from the JSON shape the command line accepts."""
        return cls(
            client_id=str(data["client_id"]),
            redirect_uris=tuple(str(u) for u in data.get("redirect_uris", ())),
            auth_method=str(data.get("auth_method", "none")),
            client_secret=data.get("client_secret"),
            jwks_url=data.get("jwks_url"),
        )


OIDC_AUTH_METHODS = ("client_secret_post", "client_secret_basic", "private_key_jwt")


@dataclass(frozen=True)
class OidcClient:
    """One application registered with the sandbox's OpenID provider, as an identity admin would register it.

    `tenants` empty means a multi-tenant application (usable at every tenant's endpoints); otherwise only at
    the tenants named. A private_key_jwt client gives its public keys inline (`jwks`) or by URL (`jwks_url`).
    """

    client_id: str
    redirect_uris: tuple[str, ...]
    auth_method: str = "client_secret_post"  # one of OIDC_AUTH_METHODS
    client_secret: str | None = None
    jwks: dict[str, Any] | None = None
    jwks_url: str | None = None
    post_logout_redirect_uris: tuple[str, ...] = ()
    tenants: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.client_id:
            raise ValueError("client_id must not be empty")
        if self.auth_method not in OIDC_AUTH_METHODS:
            raise ValueError(f"client {self.client_id!r}: auth_method must be one of {OIDC_AUTH_METHODS}")
        if self.auth_method.startswith("client_secret") and not self.client_secret:
            raise ValueError(f"client {self.client_id!r}: {self.auth_method} needs a client_secret")
        if self.auth_method == "private_key_jwt":
            if (self.jwks is None) == (self.jwks_url is None):
                raise ValueError(f"client {self.client_id!r}: private_key_jwt needs exactly one of jwks, jwks_url")
            if self.jwks is not None and not isinstance(self.jwks.get("keys"), list):
                raise ValueError(f"client {self.client_id!r}: jwks must be a JWK set with a 'keys' list")
        if not self.redirect_uris:
            raise ValueError(f"client {self.client_id!r}: at least one redirect URI is needed")
        for uri in (*self.redirect_uris, *self.post_logout_redirect_uris):
            parts = urlsplit(uri)
            # RFC 6749 3.1.2: absolute, and no fragment.
            if parts.scheme not in ("http", "https") or not parts.netloc or parts.fragment or "#" in uri:
                raise ValueError(f"client {self.client_id!r}: {uri!r} is not an absolute http(s) URI without fragment")
        object.__setattr__(self, "redirect_uris", tuple(self.redirect_uris))
        object.__setattr__(self, "post_logout_redirect_uris", tuple(self.post_logout_redirect_uris))
        object.__setattr__(self, "tenants", tuple(self.tenants))

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> OidcClient:
        """Build a client from the JSON shape the command line and the control endpoint accept."""
        if not isinstance(data, dict):
            raise ValueError("a client must be a JSON object")
        jwks = data.get("jwks")
        if jwks is not None and not isinstance(jwks, dict):
            raise ValueError("jwks must be a JSON object")
        for name in ("client_secret", "jwks_url"):
            if data.get(name) is not None and not isinstance(data[name], str):
                raise ValueError(f"{name} must be a string")
        lists = {}
        for name in ("redirect_uris", "post_logout_redirect_uris", "tenants"):
            value = data.get(name, [])
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ValueError(f"{name} must be a list of strings")
            lists[name] = tuple(value)
        client_id = data.get("client_id")
        auth_method = data.get("auth_method", "client_secret_post")
        if not isinstance(client_id, str) or not isinstance(auth_method, str):
            raise ValueError("client_id and auth_method must be strings")
        return cls(
            client_id=client_id,
            redirect_uris=lists["redirect_uris"],
            auth_method=auth_method,
            client_secret=data.get("client_secret"),
            jwks=jwks,
            jwks_url=data.get("jwks_url"),
            post_logout_redirect_uris=lists["post_logout_redirect_uris"],
            tenants=lists["tenants"],
        )


DEMO_PORTAL_CLIENT_ID = "visitgate-portal-demo"


def demo_portal_client(redirect_uri: str, client_secret: str, signed_out_uri: str | None = None) -> OidcClient:
    """The demo portal's registration with the OpenID provider: a confidential client of every tenant, so the
    demo can also show a sign-in from another tenant opening nothing."""
    return OidcClient(
        client_id=DEMO_PORTAL_CLIENT_ID,
        redirect_uris=(redirect_uri,),
        auth_method="client_secret_post",
        client_secret=client_secret,
        post_logout_redirect_uris=(signed_out_uri,) if signed_out_uri else (),
    )


@dataclass(frozen=True)
class SandboxSettings:
    """Everything the sandbox needs to know at start-up."""

    base_url: str  # public origin, e.g. "http://localhost:8081", no trailing slash
    app_launch_url: str  # the gateway's provider launch URL
    patient_launch_url: str | None = None  # the gateway's patient launch URL
    clients: tuple[SandboxClient, ...] = ()
    access_token_lifetime: int = 3600
    test_controls: bool = False  # exposes /_sandbox/* control endpoints
    # Applications registered with the OpenID provider at start-up (the demo's portal); tests add more
    # through /_sandbox/oidc/clients.
    oidc_clients: tuple[OidcClient, ...] = ()
    # The origin the OpenID provider names in its documents when it is served apart from base_url (the demo
    # serves it over https on a port of its own: MSAL and the portal take https identity providers only).
    oidc_url: str | None = None
    # Demo only: where the configuration portal's sign-in starts (a link on the EHR's pages), and the user
    # name of the test user the provider's sign-in page offers as one click.
    portal_sign_in_url: str | None = None
    one_click_user: str | None = None
    # Where the EHR's interface engine sends SIU appointment messages over MLLP ("host:port"), if anywhere.
    siu_target: str | None = None

    def __post_init__(self) -> None:
        if self.base_url.endswith("/"):
            raise ValueError("base_url must not end with '/'")
        if self.oidc_url is not None and (self.oidc_url.endswith("/") or "://" not in self.oidc_url):
            raise ValueError("oidc_url must be an origin without a trailing '/'")
        object.__setattr__(self, "clients", tuple(self.clients))
        object.__setattr__(self, "oidc_clients", tuple(self.oidc_clients))

    @property
    def fhir_base(self) -> str:
        """The FHIR base URL; also the OAuth issuer and the SMART `iss`."""
        return self.base_url + "/fhir"

    @property
    def token_endpoint(self) -> str:
        """Absolute URL of the token endpoint, the only audience accepted in client assertions."""
        return self.base_url + "/oauth/token"

    @property
    def oidc_base(self) -> str:
        """Where the OpenID provider lives, as login.microsoftonline.com does for Entra ID."""
        return (self.oidc_url or self.base_url) + "/idp"

    def client(self, client_id: str | None) -> SandboxClient | None:
        """The registered client with this id, or None."""
        for c in self.clients:
            if c.client_id == client_id:
                return c
        return None


@dataclass
class Faults:
    """Ways to make the EHR misbehave; all off by default."""

    discovery_without_s256: bool = False  # smart-configuration advertises only ["plain"]
    token_error: str | None = None  # OAuth error code the token endpoint answers with
    id_token: str | None = None  # one of ID_TOKEN_FAULTS
    callback_iss: str | None = None  # replaces the RFC 9207 `iss` on the authorize redirect
    fhir_status: int | None = None  # every FHIR REST call answers this status
    fhir_delay: float = 0.0  # seconds to wait before each FHIR answer
    # A server with this latency: each FHIR answer leaves this many seconds after its request arrived, the
    # sandbox's own work included (fhir_delay adds that work on top). Benchmarks use it.
    fhir_answer_after: float = 0.0
    # The same for every EHR endpoint a client or a browser calls (discovery, authorize, token, JWKS, FHIR, the
    # EHR's pages), measured from arrival too: an EHR at this distance. Benchmarks of a whole launch use it.
    ehr_answer_after: float = 0.0
    fhir_fail_next: int = 0  # the next N FHIR calls answer fhir_fail_status, then calls work again
    fhir_fail_status: int = 500
    fhir_retry_after: int | None = None  # Retry-After seconds on answers with a 429 or 503 fault status
    fhir_412_next: int = 0  # the next N writes (PUT, PATCH) answer 412 Precondition Failed, a storm of conflicts
    # The phone's SMS sink answers this many seconds after it kept a message, as a carrier's API does: the
    # window in which a sender that dies has handed a message over without hearing so.
    sms_answer_after: float = 0.0

    def update(self, changes: dict[str, Any]) -> None:
        """Set several fields at once, refusing unknown names and wrong types before changing anything."""
        known = {f.name: f for f in fields(self)}
        checked: dict[str, Any] = {}
        for name, value in changes.items():
            if name not in known:
                raise ValueError(f"unknown fault {name!r}")
            checked[name] = _check_fault(name, value)
        for name, value in checked.items():
            setattr(self, name, value)

    def as_dict(self) -> dict[str, Any]:
        """The current switches, as JSON-ready values."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _check_fault(name: str, value: Any) -> Any:
    """Validate one fault value against the field's meaning."""
    if name == "discovery_without_s256":
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be a boolean")
        return value
    if name in ("fhir_delay", "fhir_answer_after", "ehr_answer_after", "sms_answer_after"):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ValueError(f"{name} must be a non-negative number")
        return float(value)
    if name in ("fhir_fail_next", "fhir_412_next"):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer")
        return value
    if name == "fhir_retry_after":
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise ValueError(f"{name} must be a non-negative integer or null")
        return value
    if name == "fhir_fail_status":
        if isinstance(value, bool) or not isinstance(value, int) or not 400 <= value <= 599:
            raise ValueError(f"{name} must be an HTTP error status")
        return value
    if name == "fhir_status":
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 100 <= value <= 599):
            raise ValueError(f"{name} must be an HTTP status or null")
        return value
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{name} must be a string or null")
    if name == "id_token" and value is not None and value not in ID_TOKEN_FAULTS:
        raise ValueError(f"id_token must be one of {ID_TOKEN_FAULTS}")
    return value

