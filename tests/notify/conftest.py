"""Fixtures for sending join links: a real SMTP server (aiosmtpd) on 127.0.0.1, and the `stack` gateway
configured to send email to it and SMS to the sandbox's phone (its /_sms sink)."""
from __future__ import annotations

import asyncio
import email
import email.policy
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP


ORGANISATION = "Sandbox Family Clinic"


@dataclass
class ReceivedMail:
    """One message as the SMTP server received it: the envelope and the parsed message."""

    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage

    @property
    def text(self) -> str:
        """The plain-text body, transfer encoding undone."""
        part = self.message.get_body(preferencelist=("plain",))
        assert part is not None
        return str(part.get_content())


@dataclass
class SmtpServer:
    """A real SMTP server on 127.0.0.1 that keeps what it receives."""

    port: int
    server: asyncio.AbstractServer | None = None
    received: list[ReceivedMail] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        """aiosmtpd's hook: one call per message accepted."""
        parsed = email.message_from_bytes(envelope.original_content, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        self.received.append(ReceivedMail(envelope.mail_from, list(envelope.rcpt_tos), parsed))
        self.arrived.set()
        return "250 OK"


@pytest.fixture
async def smtp() -> AsyncIterator[SmtpServer]:
    """aiosmtpd serving on an ephemeral port of 127.0.0.1 in the test's event loop."""
    holder = SmtpServer(port=0)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(holder, hostname="mx.test"), "127.0.0.1", 0)
    holder.port = server.sockets[0].getsockname()[1]
    holder.server = server
    try:
        yield holder
    finally:
        server.close()
        await server.wait_closed()


@pytest.fixture
def stack_overrides(smtp: SmtpServer) -> Any:
    """The shared `stack`'s gateway sends mail to our SMTP server and texts to the sandbox's SMS sink."""

    def overrides(gateway_url: str, sandbox_url: str) -> dict[str, Any]:
        return dict(organisation_name=ORGANISATION, smtp_host="127.0.0.1", smtp_port=smtp.port,
                    smtp_from="visits@gateway.test", smtp_timeout=5, sms_provider="sink",
                    sms_sink_url=f"{sandbox_url}/_sms")

    return overrides
