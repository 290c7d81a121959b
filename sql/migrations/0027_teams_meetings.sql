-- Microsoft Teams meetings (issue 14): an organisation's Entra application, its clinicians' links to their
-- Microsoft 365 accounts, and the Teams meeting's join address on the visit.

-- One per organisation. The credential (a certificate's private key, or a secret) is sealed with the gateway
-- key (context teams_tenants.credential) and never shown again; the thumbprint is public.
CREATE TABLE teams_tenants (
    organisation_id  bigint PRIMARY KEY REFERENCES organisations (id),
    tenant_id        text NOT NULL CHECK (tenant_id ~ '^[0-9a-f-]{36}$'),
    client_id        text NOT NULL CHECK (client_id ~ '^[0-9a-f-]{36}$'),
    credential_kind  text NOT NULL CHECK (credential_kind IN ('certificate', 'secret')),
    credential       bytea NOT NULL,
    thumbprint       text,
    checked_at       timestamptz NOT NULL,
    updated_by       text NOT NULL,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    -- The last thing Graph refused that an admin must fix (e.g. an access policy for a clinician): what to do,
    -- naming only Entra object IDs and the application, never a patient.
    last_problem     text,
    last_problem_at  timestamptz
);

-- A clinician's one-time Microsoft 365 sign-in: the EHR user (their fhirUser reference, sealed, with a keyed
-- lookup) to their Entra object ID in the organisation's tenant. No tokens are kept.
CREATE TABLE teams_links (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    organisation_id  bigint NOT NULL REFERENCES organisations (id),
    ehr_user_key     bytea NOT NULL,
    ehr_user_ref     bytea NOT NULL,
    entra_oid        text NOT NULL,
    entra_tenant_id  text NOT NULL,
    linked_at        timestamptz NOT NULL DEFAULT now()
);
-- serves: teams_link_of (every Teams launch) and the upsert of a sign-in
CREATE UNIQUE INDEX teams_links_user ON teams_links (organisation_id, ehr_user_key);

-- The pop-up sign-in's state, made from a live provider session's page for that session's visit and EHR user
-- (sealed), with MSAL's flow (PKCE verifier, nonce; sealed); single use, short-lived, and only honoured while
-- that clinician's session in that visit lives.
CREATE UNLOGGED TABLE teams_sign_ins (
    state_hash       bytea PRIMARY KEY,  -- serves: take_sign_in
    organisation_id  bigint NOT NULL,
    visit_id         uuid NOT NULL,
    ehr_user_ref     bytea NOT NULL,
    flow             bytea NOT NULL,
    expires_at       timestamptz NOT NULL
);
-- serves: purge_sign_ins
CREATE INDEX teams_sign_ins_expires_at ON teams_sign_ins (expires_at);
-- serves: teams.provider_session_lives (the sign-in's callback)
CREATE INDEX provider_sessions_visit_user ON provider_sessions (visit_id, fhir_user);

-- The meeting's joinWebUrl (sealed: it opens the meeting's lobby to whoever holds it), named with the meeting.
ALTER TABLE visits ADD COLUMN meeting_join_ref bytea;
