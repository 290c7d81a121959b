-- 0012: the configuration portal's foundation: organisations, who holds which role in them, sign-ins in
-- flight and signed-in sessions. Nothing here is patient data. An organisation's admins are named by their
-- identity provider's subject; an email appears only where an admin granted a role by email (configuration).

CREATE TABLE organisations (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    slug              text NOT NULL CHECK (slug ~ '^[a-z0-9][a-z0-9-]{0,62}$'),  -- in portal URLs
    name              text NOT NULL,
    idp_kind          text NOT NULL CHECK (idp_kind IN ('entra', 'oidc')),
    -- The exact `iss` of its id_tokens (Entra: {authority host}/{tenant}/v2.0).
    issuer            text NOT NULL,
    tenant_id         text,          -- Entra's directory (tenant) id: every id_token's `tid` must equal it
    client_id         text NOT NULL,
    client_secret     bytea NOT NULL, -- sealed with the gateway key (context organisations.client_secret)
    group_claim       text NOT NULL DEFAULT 'groups',
    created_at        timestamptz NOT NULL DEFAULT now(),
    CHECK ((idp_kind = 'entra') = (tenant_id IS NOT NULL))
);
-- serves: portal.organisation_by_slug
CREATE UNIQUE INDEX organisations_slug ON organisations (slug);

CREATE TABLE memberships (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    organisation_id bigint NOT NULL REFERENCES organisations (id),
    role            text NOT NULL CHECK (role IN ('admin', 'approver', 'report_reader')),
    matched_by      text NOT NULL CHECK (matched_by IN ('subject', 'email', 'group')),
    -- The subject (Entra: oid; others: sub), the email (kept lower case) or the group id.
    value           text NOT NULL,
    granted_by      text NOT NULL,
    granted_at      timestamptz NOT NULL DEFAULT now()
);
-- serves: portal.memberships_of (every membership of one organisation, at sign-in); one grant once
CREATE UNIQUE INDEX memberships_grant ON memberships (organisation_id, matched_by, value, role);

-- One row per portal sign-in between the redirect to the identity provider and its callback; taken once.
-- Unlogged like launch_states (0005): minutes of life, and after a crash a sign-in simply starts again.
CREATE UNLOGGED TABLE portal_login_states (
    state_hash      bytea PRIMARY KEY,   -- sha256 of our state; serves: portal.take_login_state
    organisation_id bigint NOT NULL,     -- no foreign key, as for launch states: read back joined
    browser_hash    bytea NOT NULL,      -- sha256 of the binding cookie set on the browser that started it
    flow            bytea NOT NULL,      -- MSAL's auth code flow (verifier, nonce), sealed
    max_age         integer,             -- a fresh sign-in asked for by a later step
    return_to       text NOT NULL,       -- a portal path, chosen by our code
    expires_at      timestamptz NOT NULL
);
-- serves: portal.purge_login_states
CREATE INDEX portal_login_states_expires_at ON portal_login_states (expires_at);

CREATE TABLE portal_sessions (
    session_hash    bytea PRIMARY KEY,   -- sha256 of the session cookie; serves: portal.touch_session
    organisation_id bigint NOT NULL REFERENCES organisations (id),
    subject         text NOT NULL,       -- Entra: oid; others: sub
    roles           text[] NOT NULL,     -- resolved at sign-in
    auth_time       timestamptz,         -- when they last typed their credentials there; NULL: not said
    created_at      timestamptz NOT NULL DEFAULT now(),
    last_seen_at    timestamptz NOT NULL DEFAULT now()
);
-- serves: portal.purge_sessions
CREATE INDEX portal_sessions_last_seen_at ON portal_sessions (last_seen_at);

-- The next step gives every configuration its organisation; until then operators' configurations have none.
ALTER TABLE configurations ADD COLUMN organisation_id bigint REFERENCES organisations (id);
