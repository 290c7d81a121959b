-- 0003: patient join links, the browser sessions they are exchanged for, and the audience of a launch.
-- Still no patient data: a link names an opaque participant; a session is a hash of a random handle.
-- Display names typed in the lobby are never written here, and neither is any token.

-- A launch state now says whose launch it is: a clinician's from the EHR, or a patient's from the portal.
ALTER TABLE launch_states
    ADD COLUMN audience text NOT NULL DEFAULT 'provider' CHECK (audience IN ('provider', 'patient'));

-- One row per join link issued. The token itself is never stored: its jti finds the row.
CREATE TABLE join_links (
    jti                uuid PRIMARY KEY,     -- serves: join.get_link, join.lock_link, join.revoke_link
    participant_id     uuid NOT NULL REFERENCES participants (id),
    visit_id           uuid NOT NULL REFERENCES visits (id),
    expires_at         timestamptz NOT NULL, -- the token's exp: the visit's window end plus grace, capped
    revoked_at         timestamptz,
    bound_session_hash bytea,                -- sha256 of the vg_participant handle that first used the link
    created_at         timestamptz NOT NULL DEFAULT now()
);
-- serves: join.revoke_links_of_participant
CREATE INDEX join_links_participant ON join_links (participant_id);
-- serves: join.purge_expired_links
CREATE INDEX join_links_expires_at ON join_links (expires_at);

-- A patient's or guest's browser session in a visit, held as the vg_participant cookie.
CREATE TABLE participant_sessions (
    handle_hash    bytea PRIMARY KEY,        -- sha256 of the cookie's handle; serves: join.participant_for_session
    participant_id uuid NOT NULL REFERENCES participants (id),
    visit_id       uuid NOT NULL REFERENCES visits (id),
    jti            uuid REFERENCES join_links (jti),  -- the link it came from; NULL after a portal launch
    expires_at     timestamptz NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now()
);
-- serves: join.purge_expired_sessions
CREATE INDEX participant_sessions_expires_at ON participant_sessions (expires_at);
-- serves: join.purge_expired_links (a link may go only once no session points at it)
CREATE INDEX participant_sessions_jti ON participant_sessions (jti) WHERE jti IS NOT NULL;
