"""The messages sent about a visit, counted on its usage row (`visit_usage.sms_sent`, `email_sent`) by whoever
sends them: the provider view's invitations and re-sends (launch.invites) and the appointment feed's
confirmations and reminders (appointments.sender).

Counted by the sender, in the transaction that records the send, rather than by the usage follower
(presence.usage): a reminder goes out before the visit has any presence event, and a late one after its last,
so a follower driven by events would miss both, and reading every message at report time is what visit_usage
exists to avoid. The follower never writes these two columns and the senders only add to them, so neither can
undo the other's figure. Nothing about the message is kept here but its channel.
"""
from __future__ import annotations

from uuid import UUID

import asyncpg

import sql

Q = sql.queries("usage")
COUNTED = ("sms", "email")
"""The channels that send a message; a link shown for the clinician to copy ("copy") sends none."""


async def count_sent(conn: asyncpg.Connection, visit_id: UUID, channel: str) -> None:
    """Add one message sent about the visit by channel to its usage figures (making its row if it has none);
    call it inside the transaction that records the send, so the count and the record stand or fall together."""
    if channel not in COUNTED:
        return
    await conn.execute(Q["count_sent"], visit_id, int(channel == "sms"), int(channel == "email"))
