"""Doubles of the SMS carriers (Azure Communication Services, Twilio): small aiohttp servers that enforce
each carrier's documented contract and refuse what the real service would refuse. They share no code with the
gateway's clients: the signatures and shapes are written here again, from the carriers' documentation."""
from __future__ import annotations

from .acs import AcsDouble
from .rate import RateLimit
from .twilio import TwilioDouble

__all__ = ["AcsDouble", "RateLimit", "TwilioDouble"]
