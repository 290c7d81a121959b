"""Join-link email over SMTP (aiosmtplib): any SMTP server in production, aiosmtpd in the demo and tests.

The recipient address is read from FHIR by the caller just before sending and handed to us once; it is
never logged here, and SMTP failures are re-raised as NotifyError without the library's message, which
may name the recipient.
"""
from __future__ import annotations

import email.utils
from dataclasses import dataclass, field
from email.message import EmailMessage

import aiosmtplib

from .errors import NotifyError


@dataclass(frozen=True)
class SmtpConfig:
    """Where and how to reach the SMTP server."""

    host: str
    port: int
    sender: str
    starttls: bool = False
    tls: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    timeout: float = 10.0


class EmailSender:
    """Sends plain-text messages through one SMTP server, one connection per message."""

    def __init__(self, config: SmtpConfig) -> None:
        self.config = config

    def compose(self, to: str, subject: str, body: str, *, message_id: str | None = None,
                calendar: bytes | None = None, calendar_method: str = "REQUEST") -> EmailMessage:
        """The message as it will be sent; message_id (a stable one, for a message that may be sent again
        after a crash) and a calendar invitation (text/calendar, RFC 6047) when given."""
        message = EmailMessage()
        message["From"] = self.config.sender
        message["To"] = to
        message["Subject"] = subject
        message["Date"] = email.utils.formatdate(localtime=False, usegmt=True)
        domain = self.config.sender.rpartition("@")[2] or None
        message["Message-ID"] = message_id or email.utils.make_msgid(domain=domain)
        message["Auto-Submitted"] = "auto-generated"  # RFC 3834: no vacation replies to the gateway
        message.set_content(body)
        if calendar is not None:
            # An attachment calendar clients offer to add (and a METHOD:CANCEL one takes it off again).
            message.add_attachment(calendar, maintype="text", subtype="calendar", filename="invite.ics",
                                   params={"method": calendar_method, "charset": "utf-8"})
        return message

    async def send(self, to: str, subject: str, body: str, *, message_id: str | None = None,
                   calendar: bytes | None = None, calendar_method: str = "REQUEST") -> None:
        """Send one message to one recipient; raises NotifyError when the server will not take it."""
        config = self.config
        try:
            await aiosmtplib.send(
                self.compose(to, subject, body, message_id=message_id, calendar=calendar,
                             calendar_method=calendar_method), hostname=config.host, port=config.port,
                username=config.username, password=config.password, use_tls=config.tls,
                # False, not None: aiosmtplib would otherwise upgrade opportunistically and fail on
                # servers whose certificate we did not ask to trust.
                start_tls=True if config.starttls else False, timeout=config.timeout)
        except aiosmtplib.SMTPRecipientsRefused:
            raise NotifyError("The mail server refused the address on file.", reason="email_refused") from None
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            # The exception text can carry the recipient; only its type is kept.
            raise NotifyError(f"The mail server could not be reached or refused the message "
                              f"({type(exc).__name__}).", reason="email_failed") from None
