-- 0006: the handle in a provider page's URL is short-lived and renewed by the page.
-- A clinician's session still lasts provider_sessions.expires_at (12 h by default), but the URL that carries
-- it ends up in the EHR browser's history; each handle now works for minutes (provider_handle_ttl) and the
-- open page trades it for a fresh one before then, replacing its URL. A handle found in the history later
-- has expired. Several handles of one session may be live at once (two tabs each renew their own).
CREATE TABLE provider_handles (
    handle_hash  bytea PRIMARY KEY,       -- sha256 of a handle; serves: sessions.provider_identity
    session_hash bytea NOT NULL REFERENCES provider_sessions (handle_hash) ON DELETE CASCADE,
    expires_at   timestamptz NOT NULL
);
-- serves: the cascade when a session is purged
CREATE INDEX provider_handles_session ON provider_handles (session_hash);
-- serves: launch.purge_expired_handles
CREATE INDEX provider_handles_expires_at ON provider_handles (expires_at);

-- Sessions opened before this migration keep the handle their URL carries, until the session ends.
INSERT INTO provider_handles (handle_hash, session_hash, expires_at)
SELECT handle_hash, handle_hash, expires_at FROM provider_sessions;
