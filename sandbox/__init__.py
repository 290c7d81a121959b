"""A local SMART-on-FHIR EHR for the demo and the tests.

It speaks to the gateway only over HTTP, like Epic or Oracle Health would: SMART App Launch 2.2
(EHR launch, PKCE, OpenID Connect, refresh tokens, Backend Services), a FHIR R4 API over an in-memory
store with synthetic data, a clinician's schedule page that embeds the app, and a patient portal.
"""
from __future__ import annotations

from .app import create_sandbox_app
from .appkeys import FAULTS, LAUNCHES, SETTINGS, STORE
from .config import Faults, SandboxClient, SandboxSettings
from .grants import LaunchContext
from .launches import create_launch
from .seed import seed
from .store import FhirStore

__all__ = [
    "FAULTS",
    "LAUNCHES",
    "SETTINGS",
    "STORE",
    "Faults",
    "FhirStore",
    "LaunchContext",
    "SandboxClient",
    "SandboxSettings",
    "create_launch",
    "create_sandbox_app",
    "seed",
]
