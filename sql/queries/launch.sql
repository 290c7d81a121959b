-- name: start_launch
-- One round trip: keep the state, bound to the browser's key ($5), only if `iss` is exactly an approved
-- FHIR base URL. A configuration that is not approved (pending, rejected, retired) answers its status and
-- keeps nothing; no row at all: nobody registered this `iss`.
WITH c AS (
    SELECT id, client_id, client_auth, scopes, status FROM configurations
    WHERE fhir_base_url = $2
), kept AS (
    INSERT INTO launch_states (state_hash, configuration_id, expires_at, audience, browser_hash, launch_ref,
                               department)
    SELECT $1, c.id, now() + make_interval(secs => $3), $4, $5, $6, $7 FROM c WHERE c.status = 'approved'
    RETURNING configuration_id
)
SELECT c.id, c.status, c.client_id, c.client_auth, c.scopes FROM c LEFT JOIN kept ON kept.configuration_id = c.id;

-- name: count_launch_refusal
-- The error report's counter of failed launches: per configuration (NULL: an unknown `iss`), day, reason and
-- bucket (this connection's: connections counting at once update different rows). The day is today in the
-- configuration's organisation's time zone, or the gateway's ($3) when it has none of its own or the
-- configuration no organisation (an unknown `iss`), so the report's days are the organisation's.
INSERT INTO launch_refusals (configuration_id, reason, day, bucket, count)
VALUES ($1, $2,
        (now() AT TIME ZONE coalesce((SELECT o.time_zone FROM configurations c
                                      JOIN organisations o ON o.id = c.organisation_id
                                      WHERE c.id = $1), $3::text))::date,
        (pg_backend_pid() % 64)::smallint, 1)
ON CONFLICT ((coalesce(configuration_id, 0)), day, reason, bucket)
    DO UPDATE SET count = launch_refusals.count + 1;

-- name: approved_bases
-- The FHIR base URLs an unknown `iss` may nearly match.
SELECT id, fhir_base_url FROM configurations WHERE status = 'approved' ORDER BY id;

-- name: note_near_miss
-- Keep a near miss's URL once per configuration and day, unless that configuration has $4 of them that day
-- already (a flood of made-up URLs stays bounded). Insert-only: repeats touch no row. The day (and so the
-- cap's day) is today in the configuration's organisation's time zone, or the gateway's ($5).
WITH today AS (
    SELECT (now() AT TIME ZONE coalesce((SELECT o.time_zone FROM configurations c
                                         JOIN organisations o ON o.id = c.organisation_id
                                         WHERE c.id = $1), $5::text))::date AS day
)
INSERT INTO launch_near_misses (configuration_id, day, iss, difference)
SELECT $1, t.day, $2, $3 FROM today t
WHERE (SELECT count(*) FROM launch_near_misses WHERE configuration_id = $1 AND day = t.day) < $4
ON CONFLICT DO NOTHING;

-- name: take_launch_state
-- Single use, and only by the browser the state is bound to (its key among $2): the row is gone whether or
-- not it had expired. Another browser's try leaves it for the browser that started the launch.
DELETE FROM launch_states s
USING configurations c
WHERE s.state_hash = $1 AND s.browser_hash = ANY($2::bytea[]) AND c.id = s.configuration_id
RETURNING s.expires_at > now() AS fresh, s.audience, s.browser_hash, s.department, c.id, c.fhir_base_url, c.client_id,
          c.client_auth, c.client_secret, c.scopes, c.meeting_provider, c.status;

-- name: pending_launch
-- A state that take_launch_state did not take: whose launch it is and how to start it again.
SELECT s.audience, s.launch_ref, c.fhir_base_url
FROM launch_states s JOIN configurations c ON c.id = s.configuration_id
WHERE s.state_hash = $1 AND s.expires_at > now();

-- name: purge_expired_states
DELETE FROM launch_states WHERE expires_at < now();

-- name: find_or_create_visit
-- Both launches, the clinician's and the patient's: one visit per encounter. Atomic under concurrent
-- launches of one encounter: the unique index makes them meet on one row. The first department named stays.
INSERT INTO visits (configuration_id, encounter_key, encounter_ref, patient_ref, meeting_provider, department)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (configuration_id, encounter_key)
    DO UPDATE SET department = coalesce(visits.department, EXCLUDED.department)
RETURNING id, meeting_id, meeting_provider, patient_ref;

-- name: create_provider_session
-- A clinician's session in a visit, bound to the browser key of its launch ($10), and its first short-lived
-- URL handle ($11), for the address the launch redirects to ($1 itself is never shown).
WITH session AS (
    INSERT INTO provider_sessions (handle_hash, visit_id, fhir_user, access_token, token_expires_at, scopes,
                                   need_patient_banner, smart_style_url, expires_at, browser_hash)
    VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5), $6, $7, $8, now() + make_interval(secs => $9),
            $10)
    RETURNING handle_hash, expires_at
)
INSERT INTO provider_handles (handle_hash, session_hash, expires_at)
SELECT $11, session.handle_hash, least(now() + make_interval(secs => $12), session.expires_at)
FROM session;

-- name: set_meeting
-- The first launch to get here names the meeting; later ones read the winner's.
UPDATE visits SET meeting_id = COALESCE(meeting_id, $2) WHERE id = $1 RETURNING meeting_id;

-- name: get_provider_session
SELECT s.visit_id, s.fhir_user, s.access_token, s.token_expires_at, s.scopes, s.need_patient_banner,
       s.smart_style_url, v.encounter_ref, v.patient_ref, v.meeting_provider, v.meeting_id,
       c.fhir_base_url, c.environment, extract(epoch FROM h.expires_at - now())::float8 AS handle_expires_in
FROM provider_handles h
JOIN provider_sessions s ON s.handle_hash = h.session_hash
JOIN visits v ON v.id = s.visit_id
JOIN configurations c ON c.id = v.configuration_id
WHERE h.handle_hash = $1 AND s.browser_hash = ANY($2::bytea[]) AND h.expires_at > now() AND s.expires_at > now();

-- name: renew_provider_handle
-- A fresh handle for the session a live handle belongs to, lasting $3 seconds but never past the session.
-- The old handle keeps its own expiry: a request already on its way with it still works. Only a browser
-- holding the key the session is bound to (one of $4) gets one.
INSERT INTO provider_handles (handle_hash, session_hash, expires_at)
SELECT $2, s.handle_hash, least(now() + make_interval(secs => $3), s.expires_at)
FROM provider_handles h JOIN provider_sessions s ON s.handle_hash = h.session_hash
WHERE h.handle_hash = $1 AND s.browser_hash = ANY($4::bytea[]) AND h.expires_at > now() AND s.expires_at > now()
RETURNING extract(epoch FROM expires_at - now())::float8 AS expires_in;

-- name: purge_expired_handles
DELETE FROM provider_handles WHERE expires_at < now();

-- name: purge_expired_sessions
-- Their handles go with them (ON DELETE CASCADE).
DELETE FROM provider_sessions WHERE expires_at < now();
