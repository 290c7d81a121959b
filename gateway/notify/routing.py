"""Which texts an organisation lets go out, and from which number: what its SMS set-up in the portal says.

A configuration (FHIR base URL) of an organisation sends SMS only once that organisation's admins gave both
consents (the terms, and sending to patients on its behalf), only the kinds of message they chose
(confirmations, reminders, join links), and from the number they linked to that configuration (else the
gateway's own VISITGATE_SMS_FROM). An operator's configuration that belongs to no organisation follows the
gateway's settings alone, as before the portal had an SMS set-up.
"""
from __future__ import annotations

from dataclasses import dataclass

import asyncpg

import sql

Q = sql.queries("sms")
KINDS = ("confirmation", "reminder", "join_link")


@dataclass(frozen=True)
class SmsRoute:
    """Whether a kind of text may go out for a configuration, why not, and from which number."""

    allowed: bool
    reason: str | None = None
    """sms_not_consented | sms_kind_off, when not allowed."""
    sender: str | None = None
    """The organisation's number linked to the configuration; None: the gateway's configured sender."""


async def sms_route(conn: asyncpg.Connection, fhir_base_url: str, kind: str) -> SmsRoute:
    """What the SMS set-up says about sending a text of kind ("confirmation", "reminder", "join_link") for the
    configuration of fhir_base_url."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}")  # our own callers name it: a bug, not input
    row = await conn.fetchrow(Q["route_of_configuration"], fhir_base_url)
    if row is None or row["organisation_id"] is None:
        return SmsRoute(True)
    if not (row["terms_accepted"] and row["consent_given"]):
        return SmsRoute(False, "sms_not_consented")
    if not row[f"send_{kind}"]:
        return SmsRoute(False, "sms_kind_off")
    return SmsRoute(True, sender=row["sender"])
