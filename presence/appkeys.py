"""Typed application keys of the presence part."""
from __future__ import annotations

from aiohttp import web

from .announcer import Announcer
from .bus import PresenceBus
from .hub import Hub
from .lease import ProcessLease
from .teams_events import TeamsEvents
from .limits import StoreBudget
from .usage import UsageFollower
from .visit_end import VisitSweeper
from .webhooks import WebhookWorker
from .writeback import WritebackWorker

ANNOUNCER = web.AppKey("presence_announcer", Announcer)  # this process's coalesced event notifications
HUB = web.AppKey("presence_hub", Hub)
BUS = web.AppKey("presence_bus", PresenceBus)
WRITEBACK = web.AppKey("writeback_worker", WritebackWorker)
LEASE = web.AppKey("presence_lease", ProcessLease)
STORE_BUDGET = web.AppKey("presence_store_budget", StoreBudget)  # events each participant may still store
CHAT_BUDGET = web.AppKey("presence_chat_budget", StoreBudget)  # chat messages each participant may still send
SWEEPER = web.AppKey("visit_sweeper", VisitSweeper)  # ends idle visits and visits past their window
WEBHOOKS = web.AppKey("webhook_worker", WebhookWorker)  # follows events into the webhook outbox, delivers them
TEAMS = web.AppKey("teams_events", TeamsEvents)  # Graph subscriptions of Teams meetings, their webhook and worker
USAGE = web.AppKey("usage_follower", UsageFollower)  # keeps the usage report's per-visit figures as events arrive
