"""The integration records an organisation builds in its EHR for each approved configuration, by EHR: what an
Epic analyst enters in the provider, patient (MyChart), direct link and device-test records; the SMART app
registration fields of Oracle Health's code console; a generic SMART registration for any other EHR.

Everything here is public by design (URLs, client IDs, scopes): no client secret is ever shown again.
"""
from __future__ import annotations

from dataclasses import dataclass

import asyncpg

import sql
from gateway.configurations import PATIENT_SCOPES

Q = sql.queries("portal")

APP_NAME = "Visitgate video visits"
BACKEND_SCOPES = "system/Encounter.read system/Encounter.write"
EHR_NAMES = {"epic": "Epic", "oracle": "Oracle Health", "smart": "SMART on FHIR EHR"}
CLIENT_AUTH_NOTES = {"private_key_jwt": "An asymmetric key: the EHR reads Visitgate's public keys at the JWKS URL.",
                     "client_secret_basic": "A client secret sent by HTTP Basic: the secret is not shown again.",
                     "public": "A public client: no client authentication."}


@dataclass(frozen=True)
class Field:
    """One value to enter in the EHR, with a stable key for the JSON download."""

    key: str
    label: str
    value: str
    note: str = ""


@dataclass(frozen=True)
class Record:
    """One record (or registration) to build in the EHR."""

    key: str
    title: str
    purpose: str
    fields: tuple[Field, ...]


@dataclass(frozen=True)
class ApprovedConfiguration:
    """The values in force of one approved configuration that the records are made from (no secret)."""

    id: int
    fhir_base_url: str
    environment: str
    ehr: str
    client_id: str
    client_auth: str
    scopes: str
    writeback_strategy: str


@dataclass(frozen=True)
class ConfigurationRecords:
    """An approved configuration and its records."""

    configuration: ApprovedConfiguration
    records: tuple[Record, ...]

    @property
    def ehr_name(self) -> str:
        """The EHR's name as people say it."""
        return EHR_NAMES[self.configuration.ehr]


async def approved_configurations(conn: asyncpg.Connection, org_id: int) -> list[ApprovedConfiguration]:
    """The organisation's approved configurations (values in force), oldest first."""
    return [ApprovedConfiguration(**dict(r)) for r in await conn.fetch(Q["approved_configurations_of"], org_id)]


def _common(public_url: str, c: ApprovedConfiguration) -> list[Field]:
    fields = [Field("client_id", "Client ID", c.client_id),
              Field("redirect_uri", "Redirect URI", f"{public_url}/launch/callback"),
              Field("client_authentication", "Client authentication", c.client_auth, CLIENT_AUTH_NOTES[c.client_auth])]
    if c.client_auth == "private_key_jwt":
        fields.append(Field("jwks_url", "JWKS URL (public keys)", f"{public_url}/.well-known/jwks.json"))
    return fields


def _backend(c: ApprovedConfiguration) -> list[Field]:
    if c.writeback_strategy == "none":
        return []
    return [Field("backend_scopes", "Backend (system) scopes, for write-back", BACKEND_SCOPES,
                  "Visitgate writes the visit's status back to the Encounter.")]


def _launch_parameters(department: bool) -> Field:
    value = "iss, launch" + (", department" if department else "")
    note = ("iss: the FHIR base URL; launch: the EHR's launch token (the EHR adds both to every SMART launch)."
            + (" department: the department's identifier from the visit's context, for the usage reports."
               if department else ""))
    return Field("context_parameters", "Context parameters", value, note)


def epic_records(public_url: str, c: ApprovedConfiguration) -> tuple[Record, ...]:
    """Epic's four records: provider launch, patient (MyChart) launch, direct link, device test."""
    return (
        Record("provider_launch", "Provider launch", "The clinician starts the visit from Hyperspace or Haiku.", (
            Field("launch_url", "Launch URL", f"{public_url}/launch"),
            _launch_parameters(department=True),
            *_common(public_url, c),
            Field("scopes", "Scopes", c.scopes),
            *_backend(c))),
        Record("patient_launch", "Patient launch (MyChart)", "The patient joins from MyChart's visit.", (
            Field("launch_url", "Launch URL", f"{public_url}/launch/patient"),
            _launch_parameters(department=False),
            *_common(public_url, c),
            Field("scopes", "Scopes", PATIENT_SCOPES))),
        Record("direct_link", "Direct link (SMS or email)",
               "The link the clinician sends from the visit; whoever opens it needs no EHR account.", (
                   Field("launch_url", "Link base URL", f"{public_url}/join",
                         "Visitgate adds a single-use token to each link it sends."),
                   Field("context_parameters", "Context parameters", "none",
                         "The link carries its own token; the EHR passes nothing."))),
        Record("device_test", "Device test", "Lets a patient try camera, microphone and speakers before the visit.", (
            Field("launch_url", "Device test URL", f"{public_url}/device-test",
                  "Open to anyone, with no visit or account; nothing is recorded. The waiting room tests the "
                  "device again, the video relay included, when the patient joins."),
            Field("context_parameters", "Context parameters", "none"))),
    )


def oracle_records(public_url: str, c: ApprovedConfiguration) -> tuple[Record, ...]:
    """Oracle Health's SMART app registration (code console): one app with user, patient and system types."""
    types = "User (provider), Patient" + (", System (backend)" if c.writeback_strategy != "none" else "")
    return (Record("smart_app_registration", "SMART app registration",
                   "Register one SMART app in Oracle Health's code console with these values.", (
                       Field("app_name", "App name", APP_NAME),
                       Field("app_types", "App types", types),
                       Field("smart_launch_uri", "SMART launch URI (provider)", f"{public_url}/launch"),
                       Field("patient_launch_uri", "SMART launch URI (patient)", f"{public_url}/launch/patient"),
                       *_common(public_url, c),
                       Field("user_scopes", "User (provider) scopes", c.scopes),
                       Field("patient_scopes", "Patient scopes", PATIENT_SCOPES),
                       *_backend(c),
                       _launch_parameters(department=True))),)


def smart_records(public_url: str, c: ApprovedConfiguration) -> tuple[Record, ...]:
    """The generic SMART on FHIR registration any other EHR asks for."""
    return (Record("smart_registration", "SMART on FHIR registration",
                   "Register Visitgate as a SMART app (EHR launch) with these values.", (
                       Field("app_name", "App name", APP_NAME),
                       Field("launch_url", "Launch URL (EHR launch)", f"{public_url}/launch"),
                       Field("patient_launch_url", "Patient launch URL", f"{public_url}/launch/patient"),
                       *_common(public_url, c),
                       Field("scopes", "Provider scopes", c.scopes),
                       Field("patient_scopes", "Patient scopes", PATIENT_SCOPES),
                       *_backend(c),
                       _launch_parameters(department=True))),)


def records_of(public_url: str, c: ApprovedConfiguration) -> ConfigurationRecords:
    """The records of one approved configuration, by its EHR."""
    make = {"epic": epic_records, "oracle": oracle_records, "smart": smart_records}[c.ehr]
    return ConfigurationRecords(c, make(public_url, c))


def as_json(public_url: str, organisation_slug: str, found: list[ConfigurationRecords]) -> dict[str, object]:
    """The download: every approved configuration and its records, keyed by stable names."""
    return {
        "organisation": organisation_slug,
        "gateway": public_url,
        "configurations": [{
            "id": r.configuration.id,
            "ehr": r.configuration.ehr,
            "environment": r.configuration.environment,
            "fhir_base_url": r.configuration.fhir_base_url,
            "records": {rec.key: {f.key: f.value for f in rec.fields} for rec in r.records},
        } for r in found],
    }
