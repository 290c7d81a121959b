-- name: lock_follower
-- One usage follower at a time across processes; the others skip their turn.
SELECT last_id, gap_snapshot, gap_upto FROM usage_follower FOR UPDATE SKIP LOCKED;

-- name: move_follower
UPDATE usage_follower SET last_id = $1, gap_snapshot = $2, gap_upto = $3;

-- name: events_after
-- Events after the follower's position, oldest first, with the participant's role and, for a `visit_ended`,
-- whether the patient never came. Looked up per event (by primary key and by visit_ends' unique event id):
-- as joins, the planner hashed the whole participants table for every batch (seconds at 2,000,000 rows).
SELECT e.id, e.visit_id, e.participant_id, e.kind, e.at,
       (SELECT p.role FROM participants p WHERE p.id = e.participant_id) AS role,
       CASE WHEN e.kind = 'visit_ended' THEN (SELECT x.no_show FROM visit_ends x WHERE x.event_id = e.id) END
           AS no_show
FROM presence_events e
WHERE e.id > $1
ORDER BY e.id
LIMIT $2;

-- name: open_rows
-- A usage row for each of the visits ($1) that has none yet, with what the visit's launch decided; a department
-- a later launch named (the first that names one sets it, 0021) is taken up by the row too.
INSERT INTO visit_usage (visit_id, organisation_id, opened_at, environment, meeting_provider, department)
SELECT v.id, c.organisation_id, v.created_at, c.environment, v.meeting_provider, v.department
FROM visits v JOIN configurations c ON c.id = v.configuration_id
WHERE v.id = ANY($1::uuid[])
ON CONFLICT (visit_id) DO UPDATE SET department = EXCLUDED.department
WHERE visit_usage.department IS DISTINCT FROM EXCLUDED.department;

-- name: usage_rows
SELECT visit_id, status, started_at, provider_first_at, others_first_at, last_left_at, lobby_first_at, admitted_at,
       ended_at, attendees, present
FROM visit_usage WHERE visit_id = ANY($1::uuid[]);

-- name: save_rows
-- The new state of the visits a batch of events touched (one statement for the whole batch). Not sms_sent
-- and email_sent: the senders add to those (count_sent), and a value read before their commit would undo it.
UPDATE visit_usage u SET
    status = n.status, started_at = n.started_at, provider_first_at = n.provider_first_at,
    others_first_at = n.others_first_at, last_left_at = n.last_left_at, lobby_first_at = n.lobby_first_at,
    admitted_at = n.admitted_at, ended_at = n.ended_at, duration_s = n.duration_s, lobby_wait_s = n.lobby_wait_s,
    attendees = n.attendees, present = n.present, last_event_id = n.last_event_id
FROM unnest($1::uuid[], $2::text[], $3::timestamptz[], $4::timestamptz[], $5::timestamptz[], $6::timestamptz[],
            $7::timestamptz[], $8::timestamptz[], $9::timestamptz[], $10::real[], $11::real[], $12::integer[],
            $13::jsonb[], $14::bigint[])
     AS n(visit_id, status, started_at, provider_first_at, others_first_at, last_left_at, lobby_first_at,
          admitted_at, ended_at, duration_s, lobby_wait_s, attendees, present, last_event_id)
WHERE u.visit_id = n.visit_id;

-- name: count_sent
-- One message about visit $1 went out by SMS ($2 = 1) or email ($3 = 1): added to its usage row in the
-- sender's transaction, the row made as open_rows makes it when the visit has none yet (a reminder comes
-- before any event). Increments only, so neither the follower nor another sender can lose one.
INSERT INTO visit_usage (visit_id, organisation_id, opened_at, environment, meeting_provider, department,
                         sms_sent, email_sent)
SELECT v.id, c.organisation_id, v.created_at, c.environment, v.meeting_provider, v.department, $2, $3
FROM visits v JOIN configurations c ON c.id = v.configuration_id
WHERE v.id = $1
ON CONFLICT (visit_id) DO UPDATE SET sms_sent = visit_usage.sms_sent + EXCLUDED.sms_sent,
                                     email_sent = visit_usage.email_sent + EXCLUDED.email_sent;
