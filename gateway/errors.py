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
    """An outside service (the EHR's authorization or FHIR server) failed or answered nonsense.

    What we answer for an EHR fault (gateway.ehr raises these; the reason code says which call and how):
    - 502 Bad Gateway: the EHR answered, but wrongly: an error status, a body that is not JSON, too large,
      a redirect to another origin (`discovery_redirect`), discovery without S256, a token error, an invalid
      id_token. This class and AuthServerError, IdTokenInvalid and FhirError.
    - 503 Service Unavailable: the EHR could not be reached (refused, reset, DNS, TLS) or said it is
      unavailable (503, 429): UpstreamUnavailable.
    - 504 Gateway Timeout: the EHR did not answer within the call's time limit: UpstreamTimeout.
    `status`, when given, replaces the class's (a FhirError for an unreachable server is a 503);
    `upstream_status` is what the EHR answered, if it answered.
    """

    status = 502
    reason = "upstream_error"
    title = "The EHR did not answer as expected"

    def __init__(self, detail: str = "", *, reason: str | None = None, status: int | None = None,
                 upstream_status: int | None = None) -> None:
        super().__init__(detail, reason=reason)
        if status is not None:
            self.status = status
        self.upstream_status = upstream_status


class UpstreamUnavailable(UpstreamError):
    """The EHR could not be reached, or said it is unavailable: 503."""

    status = 503
    reason = "upstream_unavailable"
    title = "The EHR is not available right now"


class UpstreamTimeout(UpstreamError):
    """The EHR did not answer in time: 504."""

    status = 504
    reason = "upstream_timeout"
    title = "The EHR did not answer in time"


class AuthServerError(UpstreamError):
    """The EHR's authorization server refused or failed (502)."""

    reason = "token_error"


class IdTokenInvalid(UpstreamError):
    """The id_token failed validation (signature, issuer, audience, expiry, nonce): 502."""

    reason = "invalid_id_token"


class FhirError(UpstreamError):
    """A FHIR call failed (502, or the status of the fault underneath); carries the EHR's HTTP status."""

    reason = "fhir_error"

    @property
    def http_status(self) -> int | None:
        """The status the FHIR server answered, if it answered."""
        return self.upstream_status


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


class QueueRefused(VisitgateError):
    """A clinic queue the clinician may not see: a department queue their organisation does not share, or
    one asked for without a department to show (reasons `department_queue_off`, `no_department`)."""

    status = 403
    reason = "department_queue_off"
    title = "This queue is not available"


class JoinLinkInvalid(VisitgateError):
    """A join link we will not honour; the reason says why, the page says what to do, and nothing else."""

    status = 400
    reason = "link_invalid"
    title = "This visit link cannot be used"
    # Per reason: the status. link_invalid covers tampered, foreign, malformed and unknown links alike.
    STATUSES = {"link_invalid": 400, "link_expired": 410, "link_revoked": 410, "link_in_use": 409,
                "visit_ended": 410}

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


class GraphError(UpstreamError):
    """Microsoft Graph or Entra ID failed or answered nonsense (gateway.graph raises this family): 502.

    `admin_message`, when set, says what an organisation admin must do (clinicians see only the title and a
    short detail; the portal shows the admin the whole of it).
    """

    reason = "graph_error"
    title = "Microsoft Teams did not answer as expected"

    def __init__(self, detail: str = "", *, reason: str | None = None, status: int | None = None,
                 upstream_status: int | None = None, admin_message: str = "") -> None:
        super().__init__(detail, reason=reason, status=status, upstream_status=upstream_status)
        self.admin_message = admin_message


class GraphPolicyDenied(GraphError):
    """Graph answered 403: the application may not act for this user (no application access policy covers
    them, or the app lacks its role); an admin can fix it, and admin_message says how: 502."""

    reason = "graph_policy_denied"
    title = "Your organisation's Teams set-up does not allow this visit yet"


class GraphThrottled(GraphError):
    """Graph kept answering 429 past the caller's deadline: 503."""

    status = 503
    reason = "graph_throttled"
    title = "Microsoft Teams is busy right now"


class GraphUnavailable(GraphError):
    """Graph or Entra could not be reached, kept answering 5xx, or did not answer in time: 503."""

    status = 503
    reason = "graph_unavailable"
    title = "Microsoft Teams is not available right now"


class GraphRefused(GraphError):
    """Graph or Entra refused the request (a 4xx other than 403 and 429, or a token refused): 502.
    `upstream_status` says what it answered; for a refused credential it is None and reason is
    `graph_credential_refused`."""

    reason = "graph_refused"


class WebhookRefused(VisitgateError):
    """A call to one of our webhooks (Graph's change notifications) that does not prove it is for us: 403."""

    status = 403
    reason = "notification_refused"
    title = "This notification was refused"
