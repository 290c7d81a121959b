-- name: insert_link
-- Only for a participant of that very visit; no row comes back otherwise. $5: the code's SHA-256.
INSERT INTO join_links (jti, participant_id, visit_id, expires_at, code_hash, appointment_at)
SELECT $1, p.id, p.visit_id, $4, $5, $6 FROM participants p
WHERE p.id = $2 AND p.visit_id = $3
RETURNING jti;

-- name: get_link_by_code
-- A short link: found by its code's digest (join_links.code_hash is unique).
SELECT l.jti, l.participant_id, l.visit_id, l.expires_at, l.revoked_at, l.bound_session_hash, l.appointment_at,
       l.expires_at <= now() AS expired,
       EXISTS (SELECT 1 FROM presence_events e
               WHERE e.visit_id = l.visit_id AND e.kind = 'visit_ended') AS visit_ended
FROM join_links l
WHERE l.code_hash = $1;

-- name: lock_link_by_code
-- As lock_link, for a short link; recent_moves counts the moves within the last $2 seconds.
SELECT l.jti, l.participant_id, l.visit_id, l.expires_at, l.revoked_at, l.bound_session_hash, l.appointment_at,
       l.expires_at <= now() AS expired,
       EXISTS (SELECT 1 FROM presence_events e
               WHERE e.visit_id = l.visit_id AND e.kind = 'visit_ended') AS visit_ended,
       CASE WHEN l.moves_since > now() - make_interval(secs => $2) THEN l.moves ELSE 0 END AS recent_moves
FROM join_links l
WHERE l.code_hash = $1
FOR UPDATE OF l;

-- name: get_link
SELECT l.jti, l.participant_id, l.visit_id, l.expires_at, l.revoked_at, l.bound_session_hash, l.appointment_at,
       l.expires_at <= now() AS expired,
       EXISTS (SELECT 1 FROM presence_events e
               WHERE e.visit_id = l.visit_id AND e.kind = 'visit_ended') AS visit_ended
FROM join_links l
WHERE l.jti = $1;

-- name: lock_link
-- The exchange holds the row until it commits, so two browsers racing for one link meet here.
SELECT l.jti, l.participant_id, l.visit_id, l.expires_at, l.revoked_at, l.bound_session_hash, l.appointment_at,
       l.expires_at <= now() AS expired,
       EXISTS (SELECT 1 FROM presence_events e
               WHERE e.visit_id = l.visit_id AND e.kind = 'visit_ended') AS visit_ended,
       CASE WHEN l.moves_since > now() - make_interval(secs => $2) THEN l.moves ELSE 0 END AS recent_moves
FROM join_links l
WHERE l.jti = $1
FOR UPDATE OF l;

-- name: bind_link
UPDATE join_links SET bound_session_hash = $2 WHERE jti = $1 AND bound_session_hash IS NULL;

-- name: move_link
-- The link's session moves to another browser: bound to the new handle, the move counted in a window of $3
-- seconds (a new window begins when the last one has passed).
UPDATE join_links
SET bound_session_hash = $2,
    moves = CASE WHEN moves_since > now() - make_interval(secs => $3) THEN moves + 1 ELSE 1 END,
    moves_since = CASE WHEN moves_since > now() - make_interval(secs => $3) THEN moves_since ELSE now() END
WHERE jti = $1;

-- name: end_moved_sessions
-- Every other browser's session of the link ends, marked as moved so its page can say why: those made from it,
-- and the one it was bound to ($3; a portal launch's session that then opened the link keeps no jti).
UPDATE participant_sessions SET moved_at = now()
WHERE (jti = $1 OR handle_hash = $3) AND handle_hash <> $2 AND moved_at IS NULL;

-- name: recently_moved
-- Whether a session of this participant moved away within the last $2 seconds (the new device's socket then
-- tells the old one).
SELECT EXISTS (SELECT 1 FROM participant_sessions
               WHERE participant_id = $1 AND moved_at > now() - make_interval(secs => $2));

-- name: session_moved
-- Whether a browser's session ended because its link was opened on another device.
SELECT moved_at IS NOT NULL FROM participant_sessions WHERE handle_hash = $1 AND expires_at > now();

-- name: session_appointment
-- When the session's appointment begins (NULL when the EHR did not say).
SELECT appointment_at FROM participant_sessions WHERE handle_hash = $1;

-- name: lobby_resume
-- Where the participant's wait stands, from events that exist anyway: its first lobby entry since it was last
-- admitted, denied or removed (a reload or a dropped network leaves and re-enters, and keeps the place), and its
-- latest device test. Read within the participant's visit through presence_events_visit (visit_id, id).
WITH mine AS (
    SELECT e.id, e.kind, e.at FROM presence_events e
    WHERE e.visit_id = (SELECT p.visit_id FROM participants p WHERE p.id = $1) AND e.participant_id = $1
), decided AS (
    SELECT coalesce(max(id), 0) AS id FROM mine WHERE kind IN ('admitted', 'denied', 'removed')
)
SELECT (SELECT min(m.at) FROM mine m, decided d WHERE m.kind = 'lobby_entered' AND m.id > d.id) AS waiting_since,
       (SELECT m.kind FROM mine m WHERE m.kind IN ('device_test_passed', 'device_test_failed')
        ORDER BY m.id DESC LIMIT 1) AS device_test;

-- name: revoke_link
UPDATE join_links SET revoked_at = now() WHERE jti = $1 AND revoked_at IS NULL RETURNING jti;

-- name: forget_unsent_guest
-- A guest whose only link never went out (the send failed): the link and the guest go, so the visit keeps
-- no trace of an invitation nobody received. Only while the guest has no session and no event.
WITH gone_links AS (
    DELETE FROM join_links l
    WHERE l.participant_id = $1
      AND EXISTS (SELECT 1 FROM participants p WHERE p.id = $1 AND p.role = 'guest')
      AND NOT EXISTS (SELECT 1 FROM participant_sessions s WHERE s.participant_id = $1)
      AND NOT EXISTS (SELECT 1 FROM presence_events e WHERE e.participant_id = $1)
    RETURNING l.participant_id
)
DELETE FROM participants p
WHERE p.id = $1 AND p.role = 'guest' AND EXISTS (SELECT 1 FROM gone_links)
RETURNING p.id;

-- name: revoke_links_of_participant
UPDATE join_links SET revoked_at = now()
WHERE participant_id = $1 AND revoked_at IS NULL AND expires_at > now();

-- name: insert_session
-- A browser presenting its own live handle again keeps it: nothing to insert then.
INSERT INTO participant_sessions (handle_hash, participant_id, visit_id, jti, expires_at, appointment_at)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (handle_hash) DO NOTHING;

-- name: session_participant
-- The raw session: whose it is, regardless of revocation (the exchange uses it to recognise a browser); a
-- session that moved to another device is not recognised: that browser gets a new one.
SELECT participant_id, visit_id, expires_at FROM participant_sessions
WHERE handle_hash = $1 AND expires_at > now() AND moved_at IS NULL;

-- name: participant_for_session
-- Live only while unexpired, the link it came from is not revoked, and the visit has not ended.
SELECT p.id, p.visit_id, p.role, p.guest_kind, p.fhir_user, s.expires_at
FROM participant_sessions s
JOIN participants p ON p.id = s.participant_id
LEFT JOIN join_links l ON l.jti = s.jti
WHERE s.handle_hash = $1
  AND s.expires_at > now()
  AND s.moved_at IS NULL
  AND l.revoked_at IS NULL
  AND NOT EXISTS (SELECT 1 FROM presence_events e
                  WHERE e.visit_id = s.visit_id AND e.kind = 'visit_ended');

-- name: purge_expired_sessions
DELETE FROM participant_sessions WHERE expires_at < now();

-- name: purge_expired_links
DELETE FROM join_links l
WHERE l.expires_at < now()
  AND NOT EXISTS (SELECT 1 FROM participant_sessions s WHERE s.jti = l.jti);

-- name: note_window_end
-- A join link (see 0020) issued for a visit whose window ends at $2: the latest window any link was made for.
UPDATE visits SET window_end = greatest(window_end, $2) WHERE id = $1;
