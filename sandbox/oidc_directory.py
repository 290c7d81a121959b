"""The tenants and test users of the sandbox's OpenID provider: a made-up directory, like an Entra ID tenant's.

Everything here is fictional: names say what the person is for, addresses are at `.example` domains (reserved
for documentation), identifiers are fixed so tests and the demo can name them. Passwords are shown on the
sign-in page: this is a test double, nobody's secret.

| tenant | issuer path | discovery lists S256 | announces RFC 9207 `iss` |
|---|---|---|---|
| Sandbox Health (`TENANT_MAIN`) | `/idp/<id>/v2.0` | no, like Entra ID | no, like Entra ID |
| Other Clinic (`TENANT_OTHER`) | same shape | no | no |
| Generic OpenID (`TENANT_GENERIC`) | same shape | yes | yes |

`organizations` plays Entra's multi-tenant endpoint: its sign-in page takes any tenant's user, its discovery
names the issuer as the literal template `{base}/{tenantid}/v2.0`, and each id_token's `iss` and `tid` are the
signed-in user's own tenant (a portal must check them itself).

Both switches can be flipped per tenant through `/_sandbox/oidc/tenants/<id>`; S256 is enforced either way.

Sandbox Health's users are one per portal role (admin, approver, report reader) and an outsider with no
role. Other Clinic's only user is an impostor: same `email`, `name` and group ids as Sandbox Health's admin,
but another `tid`, `oid` and `sub` (the email claim of a multi-tenant provider is not proof of who someone is).
"""
from __future__ import annotations

from dataclasses import dataclass

TENANT_MAIN = "5a9d0c1e-0b7f-4c3a-9e21-5a4d0000a001"
TENANT_OTHER = "5a9d0c1e-0b7f-4c3a-9e21-5a4d0000b002"
TENANT_GENERIC = "5a9d0c1e-0b7f-4c3a-9e21-5a4d0000c003"
ORGANIZATIONS = "organizations"  # Entra's alias for "any work or school tenant"

# Group object ids as Entra puts them in the `groups` claim.
GROUP_ADMINS = "9f1b6a00-0000-4a00-8000-00000000ad01"
GROUP_APPROVERS = "9f1b6a00-0000-4a00-8000-00000000a902"
GROUP_REPORT_READERS = "9f1b6a00-0000-4a00-8000-00000000e903"
GROUP_EVERYONE = "9f1b6a00-0000-4a00-8000-00000000e004"


@dataclass(frozen=True)
class Tenant:
    """A directory with its own issuer, and how its discovery document looks by default."""

    tenant_id: str
    name: str
    lists_s256: bool
    iss_parameter: bool


@dataclass(frozen=True)
class OidcUser:
    """A test user and the claims their id_token carries."""

    tenant_id: str
    username: str  # what is typed on the sign-in page; also preferred_username
    password: str
    sub: str
    oid: str
    name: str
    email: str
    groups: tuple[str, ...]
    role: str  # what the user is for in the tests, shown on the sign-in page


TENANTS = (
    Tenant(TENANT_MAIN, "Sandbox Health", lists_s256=False, iss_parameter=False),
    Tenant(TENANT_OTHER, "Other Clinic", lists_s256=False, iss_parameter=False),
    Tenant(TENANT_GENERIC, "Generic OpenID", lists_s256=True, iss_parameter=True),
    Tenant(ORGANIZATIONS, "any organisation", lists_s256=False, iss_parameter=False),
)

USERS = (
    OidcUser(TENANT_MAIN, "admin@sandbox-health.example", "admin-sandbox-pw", "sbx-sub-admin-0001",
             "0c1d0000-0000-4000-8000-00000000a001", "Avery Admin", "admin@sandbox-health.example",
             (GROUP_ADMINS, GROUP_EVERYONE), "admin"),
    OidcUser(TENANT_MAIN, "approver@sandbox-health.example", "approver-sandbox-pw", "sbx-sub-approver-0002",
             "0c1d0000-0000-4000-8000-00000000a002", "Parker Approver", "approver@sandbox-health.example",
             (GROUP_APPROVERS, GROUP_EVERYONE), "approver"),
    OidcUser(TENANT_MAIN, "reader@sandbox-health.example", "reader-sandbox-pw", "sbx-sub-reader-0003",
             "0c1d0000-0000-4000-8000-00000000a003", "Riley Reader", "reader@sandbox-health.example",
             (GROUP_REPORT_READERS, GROUP_EVERYONE), "report reader"),
    OidcUser(TENANT_MAIN, "outsider@sandbox-health.example", "outsider-sandbox-pw", "sbx-sub-outsider-0004",
             "0c1d0000-0000-4000-8000-00000000a004", "Owen Outsider", "outsider@sandbox-health.example",
             (GROUP_EVERYONE,), "no role"),
    OidcUser(TENANT_OTHER, "admin@other-clinic.example", "impostor-sandbox-pw", "sbx-sub-impostor-0101",
             "0c1d0000-0000-4000-8000-00000000b101", "Avery Admin", "admin@sandbox-health.example",
             (GROUP_ADMINS, GROUP_EVERYONE), "another tenant's user claiming the admin's email and groups"),
    OidcUser(TENANT_GENERIC, "admin@generic-idp.example", "generic-admin-pw", "sbx-sub-generic-admin-0201",
             "0c1d0000-0000-4000-8000-00000000c201", "Gene Admin", "admin@generic-idp.example",
             (GROUP_ADMINS,), "admin"),
    OidcUser(TENANT_GENERIC, "approver@generic-idp.example", "generic-approver-pw", "sbx-sub-generic-approver-0202",
             "0c1d0000-0000-4000-8000-00000000c202", "Gene Approver", "approver@generic-idp.example",
             (GROUP_APPROVERS,), "approver"),
)


def tenant(tenant_id: str) -> Tenant | None:
    """The tenant with this id, or None."""
    return next((t for t in TENANTS if t.tenant_id == tenant_id), None)


def users_of(tenant_id: str) -> tuple[OidcUser, ...]:
    """The users who can sign in at one tenant's endpoints (every user at `organizations`), in page order."""
    return tuple(u for u in USERS if tenant_id in (u.tenant_id, ORGANIZATIONS))


def user(tenant_id: str, username: str) -> OidcUser | None:
    """The user of this tenant with this username (case-insensitive, as Entra treats UPNs), or None."""
    wanted = username.strip().lower()
    return next((u for u in users_of(tenant_id) if u.username.lower() == wanted), None)
