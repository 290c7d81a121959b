"""The gateway's exception tree. Parts raise these; one middleware turns them into pages."""
from __future__ import annotations


class VisitgateError(Exception):
    """Base of every error the gateway knows how to explain."""

    status = 500
    reason = "internal_error"
    title = "Something went wrong"

    def __init__(self, detail: str = "", *, reason: str | None = None) -> None:
        super().__init__(detail or self.title)
        self.detail = detail
        if reason:
            self.reason = reason


class ConfigError(VisitgateError):
    """The gateway is misconfigured (missing or malformed setting)."""

    reason = "config_error"


class LaunchRefused(VisitgateError):
    """A launch request we will not act on: bad input from the browser or the EHR."""

    status = 400
    reason = "launch_refused"
    title = "This visit could not be started"


class UnknownIssuer(LaunchRefused):
    """The `iss` is not an approved FHIR base URL."""

    status = 403
    reason = "unknown_iss"


class StateInvalid(LaunchRefused):
    """The OAuth `state` is missing, already used, expired or unknown."""

    reason = "invalid_state"


class UpstreamError(VisitgateError):
    """An outside service (EHR authorization server, FHIR server) failed or answered nonsense."""

    status = 502
    reason = "upstream_error"
    title = "The EHR did not answer as expected"


class AuthServerError(UpstreamError):
    """The EHR's authorization server refused or failed."""

    reason = "token_error"


class IdTokenInvalid(UpstreamError):
    """The id_token failed validation (signature, issuer, audience, expiry, nonce)."""

    reason = "invalid_id_token"


class FhirError(UpstreamError):
    """A FHIR call failed; carries the HTTP status and any OperationOutcome text."""

    reason = "fhir_error"

    def __init__(self, detail: str = "", *, status: int | None = None, reason: str | None = None) -> None:
        super().__init__(detail, reason=reason)
        self.http_status = status


class NotFound(VisitgateError):
    """The thing asked for does not exist or is not the caller's to see."""

    status = 404
    reason = "not_found"
    title = "Not found"


class SessionExpired(VisitgateError):
    """The browser's session is unknown or has expired."""

    status = 401
    reason = "session_expired"
    title = "This session has ended"


class JoinLinkInvalid(VisitgateError):
    """A join link we will not honour; the reason says why, the page says what to do, and nothing else."""

    status = 400
    reason = "link_invalid"
    title = "This visit link cannot be used"
    # Per reason: the status. link_invalid covers tampered, foreign, malformed and unknown links alike.
    STATUSES = {"link_invalid": 400, "link_expired": 410, "link_revoked": 410, "link_in_use": 409}

    def __init__(self, detail: str = "", *, reason: str | None = None, title: str | None = None) -> None:
        super().__init__(detail, reason=reason)
        self.status = self.STATUSES.get(self.reason, 400)
        if title:
            self.title = title


class CrossSiteRequest(VisitgateError):
    """A state-changing request that did not come from one of our own pages (CSRF)."""

    status = 403
    reason = "cross_site_request"
    title = "This request was refused"


class BadRequest(VisitgateError):
    """A request we cannot read: characters no value may hold, a body that does not parse, a bad header.

    Raised at the edge (gateway.web) before any handler sees the input; the reason names what was wrong.
    """

    status = 400
    reason = "bad_request"
    title = "This request could not be read"
    # Per reason: the status (400 unless named here).
    STATUSES = {"unsupported_charset": 415, "unsupported_media_type": 415}

    def __init__(self, detail: str = "", *, reason: str | None = None) -> None:
        super().__init__(detail, reason=reason)
        self.status = self.STATUSES.get(self.reason, 400)


class DatabaseUnavailable(VisitgateError):
    """The database cannot be reached or refuses work for now (down, restarting, out of connections)."""

    status = 503
    reason = "database_unavailable"
    title = "The service is briefly unavailable"


class GatewayTimeout(UpstreamError):
    """Something we waited on (an outside service) did not answer in time."""

    status = 504
    reason = "upstream_timeout"
    title = "The EHR did not answer in time"
