-- name: record_invitation
-- The last way a participant's link went out (a re-send replaces it).
INSERT INTO sent_invitations (participant_id, visit_id, channel)
VALUES ($1, $2, $3)
ON CONFLICT (participant_id) DO UPDATE SET channel = EXCLUDED.channel, sent_at = now();

-- name: invitation
-- One invitation of a visit, with whom it is for; none for another visit's participant.
SELECT i.participant_id, i.channel, i.sent_at, p.role, p.guest_kind
FROM sent_invitations i
JOIN participants p ON p.id = i.participant_id
WHERE i.participant_id = $1 AND i.visit_id = $2;

-- name: list_invitations
-- A visit's invitations, oldest first, each with whether one of its links still works.
SELECT i.participant_id, i.channel, i.sent_at, p.role, p.guest_kind,
       EXISTS (SELECT 1 FROM join_links l
               WHERE l.participant_id = i.participant_id AND l.revoked_at IS NULL AND l.expires_at > now()) AS live
FROM sent_invitations i
JOIN participants p ON p.id = i.participant_id
WHERE i.visit_id = $1
ORDER BY i.sent_at, i.participant_id;
