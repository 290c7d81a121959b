"""The reason codes the error report counts, each with what happened and what to do about it.

One place for the report's explanations: the portal's error report reads them from here, and
tests/test_reasons.py checks every entry against its row in docs/errors.md (same codes, same cause, same
"what to do"), so the page and the documentation cannot drift apart. A code may name a family (`token_*`):
an exact code wins over a family, and a longer family over a shorter one.

Launch codes are the `reason` of the exception tree (gateway.errors) a failed launch raised; write-back
codes come from presence.writeback's reasons (`fhir_404 not-found`, `gave_up: fhir_503`, …), cut to their
first word by `writeback_code`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Reason:
    """One row of docs/errors.md: the codes (or families) it covers, what happened, what to do."""

    codes: tuple[str, ...]
    cause: str
    what_to_do: str

    @property
    def cause_text(self) -> str:
        """The cause as a page shows it (the documentation's code spans without their backticks)."""
        return self.cause.replace("`", "")

    @property
    def what_to_do_text(self) -> str:
        """What to do, as a page shows it."""
        return self.what_to_do.replace("`", "")


_EHR_STEP = Reason(
    ("upstream_error", "token_*", "id_token_*", "jwks_*", "fhir_*", "discovery_*", "metadata_*",
     "authorize_refused", "context_invalid"),
    "the EHR's authorization or FHIR server refused, failed or answered nonsense",
    "The code names the step; see the EHR's logs for that time.")

# Launch failures: refused at /launch (the configuration is known, or nearly: iss_near_miss) or failed after
# the EHR's sign-in, at the callback.
LAUNCH: tuple[Reason, ...] = (
    Reason(("unknown_iss",), "the EHR's FHIR base URL is not approved here",
           "Register and approve it in the configuration portal."),
    Reason(("iss_near_miss",), "a launch named a FHIR base URL that is not approved here but differs from this "
           "configuration's only by a suffix, a path or its environment (the launch was refused as "
           "`unknown_iss`; only admins see the URL, in the error report)",
           "Make the EHR's launch record and the configuration name the same FHIR base URL, or register the "
           "other URL as a configuration of its own."),
    Reason(("configuration_pending",), "the configuration is registered but not approved yet",
           "The approver named in the configuration signs in to the EHR from the portal and approves it."),
    Reason(("configuration_rejected",), "the configuration's approver rejected it",
           "Correct the configuration in the portal; its approver approves the corrected revision."),
    Reason(("configuration_retired",), "the configuration was retired, so its launches are switched off",
           "Remove the launch from the EHR, or register the FHIR base URL again if retiring it was a mistake."),
    Reason(("missing_iss", "missing_launch", "missing_code", "no_encounter", "no_patient", "invalid_iss",
            "invalid_launch"), "the EHR's launch lacks what a visit needs",
           "Start the visit from the appointment in the EHR."),
    Reason(("invalid_state", "missing_state", "expired_state", "iss_mismatch", "patient_mismatch"),
           "the sign-in answer is unknown, used, expired or not this launch's",
           "Start the visit again from the EHR."),
    Reason(("access_denied",), "the person declined the sign-in at the EHR, or the EHR's policy declined it "
           "for them", "Nothing, if they meant to; otherwise start the visit again and allow access."),
    Reason(("upstream_unavailable",), "an outbound call failed below our clients (connection refused or reset)",
           "Check that the EHR (or carrier) is reachable from the gateway."),
    Reason(("upstream_timeout",), "something we waited on did not answer in time",
           "Check that the EHR (or carrier) is reachable from the gateway, then retry."),
    _EHR_STEP,
)

# Write-back failures: attempts that were retried, gave up (dead letters) or turned write-back off.
WRITEBACK: tuple[Reason, ...] = (
    Reason(("fhir_401",), "the EHR refused the gateway's access token",
           "Nothing at first: the gateway gets a new token and retries. If it keeps happening, check the "
           "backend-services client's registration at the EHR."),
    Reason(("fhir_403",), "the EHR does not let the gateway's client read or change this Encounter",
           "Grant the backend-services client read and update of Encounters at the EHR."),
    Reason(("fhir_404", "fhir_410"), "the Encounter the launch named is not (or no longer) at the EHR",
           "Check that visits are launched from this EHR environment's own appointments; retrying changes "
           "nothing."),
    Reason(("fhir_412",), "someone else changed the Encounter every time the gateway tried to write it",
           "Nothing at first: retried with backoff. If it persists, find the other system that keeps writing "
           "the Encounter."),
    Reason(("fhir_429",), "the EHR asked the gateway to slow down",
           "Nothing at first: retried when the EHR says. If it persists, ask the EHR's team for a higher limit."),
    Reason(("fhir_4*",), "the EHR refused the Encounter the gateway wrote (the dead letter keeps the "
           "OperationOutcome's issue codes)",
           "Check the configuration's write-back strategy (PUT or PATCH) against what the EHR accepts."),
    Reason(("fhir_5*", "fhir_unavailable", "fhir_unreachable", "fhir_failed", "upstream_unavailable"),
           "the EHR's FHIR server failed or could not be reached",
           "Nothing at first: retried with backoff. Check the EHR's status and that it is reachable from the "
           "gateway."),
    Reason(("fhir_timeout", "lease_timeout"), "the EHR did not answer in time",
           "Nothing at first: retried. Check the EHR's response times."),
    Reason(("fhir_*",), "the EHR answered something that is not a versioned Encounter, redirected elsewhere or "
           "answered too much", "Check the configuration's FHIR base URL and that the EHR supports versioned "
           "updates of Encounters."),
    Reason(("token_*", "discovery_*", "jwks_*"), "the gateway could not get a backend-services token for now",
           "Nothing at first: retried. If it persists, check the EHR's token endpoint and the client's "
           "registration."),
    Reason(("token_refused", "scope_not_granted", "ehr_no_client_credentials",
            "backend_services_need_private_key_jwt"),
           "the EHR will not give the gateway a token with Encounter access, so write-back was turned off for "
           "the configuration",
           "Register the client for backend services at the EHR (client credentials, private_key_jwt, "
           "system/Encounter read and update), then have an operator turn write-back on again (see "
           "docs/writeback.md)."),
    Reason(("max_attempts",), "the events were tried as often as allowed",
           "See the reasons of the attempts before; the events given up stay in the dead letters."),
    Reason(("encounter_id_invalid", "visit_missing"), "the visit's Encounter id is not a FHIR id, or the visit "
           "is gone", "Report it with the time: the launch should have refused such an Encounter."),
)

# Any code without an entry of its own (a reason added to the code and not yet to docs/errors.md).
OTHER = Reason(("other",), "a reason without a row of its own in this document",
               "Report it with the time; the gateway's log has the line.")

_CODE = re.compile(r"^[a-z][a-z0-9_]{0,59}$")


def _index(reasons: tuple[Reason, ...]) -> tuple[dict[str, Reason], list[tuple[str, Reason]]]:
    exact = {code: r for r in reasons for code in r.codes if not code.endswith("*")}
    families = sorted(((code[:-1], r) for r in reasons for code in r.codes if code.endswith("*")),
                      key=lambda item: -len(item[0]))
    return exact, families


_LAUNCH_INDEX = _index(LAUNCH)
_WRITEBACK_INDEX = _index(WRITEBACK)


def _lookup(index: tuple[dict[str, Reason], list[tuple[str, Reason]]], code: str) -> Reason:
    exact, families = index
    if code in exact:
        return exact[code]
    for prefix, reason in families:
        if code.startswith(prefix):
            return reason
    return OTHER


def launch_reason(code: str) -> Reason:
    """What a launch failure's reason code means and what to do about it."""
    return _lookup(_LAUNCH_INDEX, code)


def writeback_reason(code: str) -> Reason:
    """What a write-back failure's reason code (see writeback_code) means and what to do about it."""
    return _lookup(_WRITEBACK_INDEX, code)


def code_or_other(code: str) -> str:
    """The code itself when it looks like one of ours (lower case, short), else "other": what is counted."""
    return code if _CODE.match(code) else "other"


def writeback_code(reason: str) -> str:
    """The code of a write-back reason: `gave_up: fhir_503 x` and `fhir_503 x` are both `fhir_503`,
    `token_refused: invalid_client` is `token_refused` (details stay in the attempts audit)."""
    text = reason.removeprefix("gave_up:").strip()
    return code_or_other(re.split(r"[\s:]", text, maxsplit=1)[0])
