-- 0014: short join links and moving a visit to another device.
-- A new link is an opaque random code (>= 128 bits) in the URL; the database keeps only its SHA-256, so a
-- leaked table opens nothing. Signed links issued before this keep their rows (code_hash NULL) and work until
-- they expire. Still no patient data: a digest, counters and times.

-- serves: join.lock_link_by_code, join.get_link_by_code (UNIQUE makes the index)
ALTER TABLE join_links ADD COLUMN code_hash bytea UNIQUE;
-- How often the link's session moved to another device lately (the exchange's rate limit): the count within
-- the window that began at moves_since.
ALTER TABLE join_links ADD COLUMN moves smallint NOT NULL DEFAULT 0;
ALTER TABLE join_links ADD COLUMN moves_since timestamptz;

-- A session ends when its link is opened on another device: the old browser's next request is refused with
-- its own reason ("you opened this visit on another device") rather than as an unknown session.
ALTER TABLE participant_sessions ADD COLUMN moved_at timestamptz;
-- serves: join.recently_moved (the new device's socket tells the old one)
CREATE INDEX participant_sessions_moved ON participant_sessions (participant_id, moved_at)
    WHERE moved_at IS NOT NULL;

-- The appointment's start, read from FHIR when the link is issued (or at a portal launch), so patient pages can
-- show when the visit is: a time of the visit, like its window end in expires_at; no person, no clinician.
ALTER TABLE join_links ADD COLUMN appointment_at timestamptz;
ALTER TABLE participant_sessions ADD COLUMN appointment_at timestamptz;
