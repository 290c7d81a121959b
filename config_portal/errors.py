"""The portal's exceptions, below the gateway's tree: the shell's error middleware turns them into pages."""
from __future__ import annotations

from gateway.errors import VisitgateError


class PortalError(VisitgateError):
    """Base of the portal's refusals."""

    status = 400
    reason = "portal_refused"
    title = "The portal refused this request"


class SignInRefused(PortalError):
    """A sign-in that opens nothing: a bad or replayed state, another browser, a failed id_token check,
    another tenant's user, or a user who holds no role. The reason code says which."""

    status = 403
    reason = "sign_in_refused"
    title = "You could not be signed in"
    # Per reason: the status. Anything the browser brought wrong is 400; who the person is, 403.
    STATUSES = {"invalid_state": 400, "state_expired": 400, "other_browser": 400, "idp_error": 400,
                "wrong_iss_parameter": 400, "missing_iss_parameter": 400}

    def __init__(self, detail: str = "", *, reason: str | None = None) -> None:
        super().__init__(detail, reason=reason)
        self.status = self.STATUSES.get(self.reason, 403)


class IdentityProviderError(PortalError):
    """The organisation's identity provider could not be reached or answered nonsense."""

    status = 502
    reason = "idp_unavailable"
    title = "The sign-in service did not answer as expected"


class NotSignedIn(PortalError):
    """No live portal session: never signed in, signed out, idle too long or past its lifetime."""

    status = 401
    reason = "not_signed_in"
    title = "Please sign in"


class RoleRequired(PortalError):
    """The signed-in person holds none of the roles this page needs, or belongs to another organisation."""

    status = 403
    reason = "role_required"
    title = "You do not have access to this page"


class UnknownOrganisation(PortalError):
    """No organisation has this name in the portal."""

    status = 404
    reason = "unknown_organisation"
    title = "No such organisation"


class ConfigurationRefused(PortalError):
    """A configuration change or decision the portal will not make: the revision was decided already, the
    configuration is retired, or the approver has not proved the URL by signing in to the EHR."""

    status = 409
    reason = "configuration_refused"
    title = "This could not be done"


class EhrSignInRefused(PortalError):
    """The approver's sign-in to the EHR proves nothing: another browser, a replayed or expired state, an
    EHR that refused, or a fhirUser that is not a practitioner of this FHIR base URL."""

    status = 403
    reason = "ehr_sign_in_refused"
    title = "Your EHR sign-in could not be used"
    STATUSES = {"ehr_state_invalid": 400, "ehr_other_browser": 400, "ehr_error": 400}

    def __init__(self, detail: str = "", *, reason: str | None = None) -> None:
        super().__init__(detail, reason=reason)
        self.status = self.STATUSES.get(self.reason, 403)
