"""Organisations and their members' roles, as the command line (and later the portal) adds them; each change
is audited."""
from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

import asyncpg

from gateway import clinic_queue
from gateway.configurations import append_audit
from gateway.errors import ConfigError
from gateway.security import Sealer

from . import store
from .idp import SECRET_CONTEXT

ENTRA_HOST = "https://login.microsoftonline.com"
_SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
RESERVED_SLUGS = ("callback", "signed-out", "sign-out", "static")  # the portal's own paths
_TENANT = re.compile(r"^[A-Za-z0-9.-]{1,100}$")


@dataclass(frozen=True)
class NewOrganisation:
    """What an operator gives to add an organisation and its identity provider."""

    slug: str
    name: str
    idp_kind: str  # "entra" or "oidc"
    client_id: str
    client_secret: str
    tenant_id: str | None = None  # Entra only
    issuer: str | None = None  # generic OpenID only
    entra_host: str = ENTRA_HOST  # another cloud's login host, or the sandbox's /idp
    group_claim: str = "groups"

    def __post_init__(self) -> None:
        if not _SLUG.match(self.slug) or self.slug in RESERVED_SLUGS:
            raise ConfigError("the organisation's short name must be lower-case letters, digits and dashes")
        if not self.name.strip() or len(self.name) > 200:
            raise ConfigError("the organisation needs a name (at most 200 characters)")
        if not self.client_id or not self.client_secret:
            raise ConfigError("a client ID and a client secret are needed")
        if not self.group_claim or len(self.group_claim) > 100:
            raise ConfigError("the group claim's name must be 1 to 100 characters")
        if self.idp_kind == "entra":
            if not self.tenant_id or not _TENANT.match(self.tenant_id) \
                    or self.tenant_id.lower() in ("common", "organizations", "consumers"):
                raise ConfigError("Entra needs the organisation's own tenant ID (not common or organizations)")
            if self.issuer is not None:
                raise ConfigError("Entra organisations are named by tenant, not by issuer")
            _https_origin(self.entra_host.rstrip("/"), "the Entra login host")
        elif self.idp_kind == "oidc":
            if self.issuer is None or self.tenant_id is not None:
                raise ConfigError("a generic OpenID provider is named by its issuer URL alone")
            parts = urlsplit(self.issuer)
            if parts.scheme != "https" or not parts.netloc or parts.query or parts.fragment \
                    or self.issuer.endswith("/"):
                raise ConfigError("the issuer must be an https URL without a trailing slash")
        else:
            raise ConfigError("the identity provider must be entra or oidc")

    @property
    def expected_issuer(self) -> str:
        """The exact `iss` of this organisation's id_tokens."""
        if self.idp_kind == "entra":
            return f"{self.entra_host.rstrip('/')}/{self.tenant_id}/v2.0"
        assert self.issuer is not None
        return self.issuer


def _https_origin(url: str, what: str) -> None:
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.netloc or parts.query or parts.fragment:
        raise ConfigError(f"{what} must be an https URL")


async def add_organisation(conn: asyncpg.Connection, sealer: Sealer, new: NewOrganisation, actor: str) -> int:
    """Add an organisation (its client secret sealed) and audit it; answers its id."""
    async with conn.transaction():
        if await store.organisation_by_slug(conn, new.slug) is not None:
            raise ConfigError(f"an organisation named {new.slug!r} already exists")
        org_id = await store.insert_organisation(
            conn, new.slug, new.name.strip(), new.idp_kind, new.expected_issuer, new.tenant_id, new.client_id,
            sealer.seal(new.client_secret, SECRET_CONTEXT), new.group_claim)
        await append_audit(conn, actor, "organisation.add", f"organisation:{org_id}",
                           {"slug": new.slug, "name": new.name.strip(), "idp": new.idp_kind,
                            "issuer": new.expected_issuer, "client_id": new.client_id,
                            "group_claim": new.group_claim}, organisation_id=org_id)
    return org_id


async def grant(conn: asyncpg.Connection, slug: str, role: str, matched_by: str, value: str, actor: str) -> bool:
    """Grant a role in an organisation to a subject, an email or a group, audited; False if it was granted already."""
    if role not in store.ROLES:
        raise ConfigError("the role must be one of " + ", ".join(store.ROLES))
    if matched_by not in store.MATCHES:
        raise ConfigError("a role is granted by subject, email or group")
    value = value.strip()
    if matched_by == "email":
        value = value.lower()
        if "@" not in value:
            raise ConfigError("that is not an email address")
    if not value or len(value) > 320:
        raise ConfigError(f"the {matched_by} must be 1 to 320 characters")
    async with conn.transaction():
        org = await store.organisation_by_slug(conn, slug)
        if org is None:
            raise ConfigError(f"no organisation is named {slug!r}")
        added = await store.insert_membership(conn, org.id, role, matched_by, value, actor)
        if added:
            await append_audit(conn, actor, "role.grant", f"organisation:{org.id}",
                               {"before": None, "after": {"role": role, "matched_by": matched_by, "value": value}},
                               organisation_id=org.id)
    return added


async def department_queue(conn: asyncpg.Connection, slug: str, allowed: bool, actor: str) -> bool:
    """Let (or stop) an organisation's clinicians see their department's clinic queue, audited; False when it
    already was so. ConfigError for an unknown organisation."""
    async with conn.transaction():
        found = await clinic_queue.set_department_queue(conn, slug, allowed)
        if found is None:
            raise ConfigError(f"no organisation is named {slug!r}")
        org_id, was = found
        if was == allowed:
            return False
        await append_audit(conn, actor, "organisation.department_queue", f"organisation:{org_id}",
                           {"before": {"department_queue": was}, "after": {"department_queue": allowed}},
                           organisation_id=org_id)
    return True
