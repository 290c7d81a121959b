-- name: insert_link
-- Only for a participant of that very visit; no row comes back otherwise.
INSERT INTO join_links (jti, participant_id, visit_id, expires_at)
SELECT $1, p.id, p.visit_id, $4 FROM participants p
WHERE p.id = $2 AND p.visit_id = $3
RETURNING jti;

-- name: get_link
SELECT l.participant_id, l.visit_id, l.expires_at, l.revoked_at, l.bound_session_hash,
       l.expires_at <= now() AS expired,
       EXISTS (SELECT 1 FROM presence_events e
               WHERE e.visit_id = l.visit_id AND e.kind = 'visit_ended') AS visit_ended
FROM join_links l
WHERE l.jti = $1;

-- name: lock_link
-- The exchange holds the row until it commits, so two browsers racing for one link meet here.
SELECT l.participant_id, l.visit_id, l.expires_at, l.revoked_at, l.bound_session_hash,
       l.expires_at <= now() AS expired,
       EXISTS (SELECT 1 FROM presence_events e
               WHERE e.visit_id = l.visit_id AND e.kind = 'visit_ended') AS visit_ended
FROM join_links l
WHERE l.jti = $1
FOR UPDATE OF l;

-- name: bind_link
UPDATE join_links SET bound_session_hash = $2 WHERE jti = $1 AND bound_session_hash IS NULL;

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
INSERT INTO participant_sessions (handle_hash, participant_id, visit_id, jti, expires_at)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (handle_hash) DO NOTHING;

-- name: session_participant
-- The raw session: whose it is, regardless of revocation (the exchange uses it to recognise a browser).
SELECT participant_id, visit_id, expires_at FROM participant_sessions
WHERE handle_hash = $1 AND expires_at > now();

-- name: participant_for_session
-- Live only while unexpired, the link it came from is not revoked, and the visit has not ended.
SELECT p.id, p.visit_id, p.role, p.guest_kind, p.fhir_user, s.expires_at
FROM participant_sessions s
JOIN participants p ON p.id = s.participant_id
LEFT JOIN join_links l ON l.jti = s.jti
WHERE s.handle_hash = $1
  AND s.expires_at > now()
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
