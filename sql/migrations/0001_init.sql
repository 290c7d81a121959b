-- 0001: configurations and their audit trail, launch state, visits, provider sessions.
-- The privacy rule holds here: no patient names, birth dates, contacts or MRNs, ever. FHIR logical
-- ids are sealed (AES-GCM, *_ref columns) and looked up through keyed digests (*_key columns).

CREATE TABLE configurations (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    fhir_base_url    text NOT NULL,
    environment      text NOT NULL CHECK (environment IN ('test', 'production')),
    client_id        text NOT NULL,
    client_auth      text NOT NULL CHECK (client_auth IN ('public', 'client_secret_basic', 'private_key_jwt')),
    client_secret    bytea,          -- sealed; only for client_secret_basic
    scopes           text NOT NULL,
    meeting_provider text NOT NULL DEFAULT 'builtin',
    status           text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'approved')),
    approved_by      text,
    approved_at      timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now()
);
-- serves: launch.start_launch (find the approved configuration whose FHIR base URL is exactly `iss`)
CREATE UNIQUE INDEX configurations_fhir_base_url ON configurations (fhir_base_url);

-- Append-only: who did what to which configuration, and when.
CREATE TABLE audit_log (
    id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at       timestamptz NOT NULL DEFAULT now(),
    actor    text NOT NULL,
    action   text NOT NULL,
    subject  text NOT NULL,
    details  jsonb NOT NULL DEFAULT '{}'
);

CREATE FUNCTION refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only', TG_TABLE_NAME;
END $$;

CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();

-- One row per launch between the redirect to the EHR and its callback; deleted when used.
-- The PKCE verifier and nonce are derived from the state with our key, so they are not stored.
CREATE TABLE launch_states (
    state_hash       bytea PRIMARY KEY,   -- sha256 of the state; serves: launch.take_launch_state
    configuration_id bigint NOT NULL REFERENCES configurations (id),
    expires_at       timestamptz NOT NULL
);
-- serves: launch.purge_expired_states
CREATE INDEX launch_states_expires_at ON launch_states (expires_at);

CREATE TABLE visits (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    configuration_id bigint NOT NULL REFERENCES configurations (id),
    encounter_key    bytea NOT NULL,      -- keyed digest of the Encounter id
    encounter_ref    bytea NOT NULL,      -- sealed Encounter id
    patient_ref      bytea,               -- sealed Patient id
    meeting_provider text NOT NULL,
    meeting_id       text,
    created_at       timestamptz NOT NULL DEFAULT now()
);
-- serves: launch.find_or_create_visit, launch.find_or_create_visit_with_session (one visit per encounter of a
-- configuration)
CREATE UNIQUE INDEX visits_configuration_encounter ON visits (configuration_id, encounter_key);

-- A clinician's launch into a visit. The browser holds the handle (the iframe may not keep cookies).
CREATE TABLE provider_sessions (
    handle_hash        bytea PRIMARY KEY,  -- sha256 of the handle; serves: launch.get_provider_session
    visit_id           uuid NOT NULL REFERENCES visits (id),
    fhir_user          text,               -- the EHR user's unique id (a clinician, not a patient)
    access_token       bytea NOT NULL,     -- sealed
    token_expires_at   timestamptz NOT NULL,
    scopes             text NOT NULL,
    need_patient_banner boolean NOT NULL,
    smart_style_url    text,
    created_at         timestamptz NOT NULL DEFAULT now(),
    expires_at         timestamptz NOT NULL
);
-- serves: launch.purge_expired_sessions
CREATE INDEX provider_sessions_expires_at ON provider_sessions (expires_at);
