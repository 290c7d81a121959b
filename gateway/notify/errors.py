"""Errors of the notify package: translated into pages and JSON at the edge like the rest of the tree."""
from __future__ import annotations

from ..errors import UpstreamError, VisitgateError


class NotifyError(UpstreamError):
    """An email or SMS could not be handed to the mail server or the SMS carrier."""

    reason = "notify_failed"
    title = "The message could not be sent"


class NotConfigured(VisitgateError):
    """The channel asked for is not set up on this gateway (e.g. no SMS provider)."""

    status = 409
    reason = "channel_not_configured"
    title = "This way of sending is not set up"
