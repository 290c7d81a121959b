-- name: lock_visit
-- Held until the end is written: two clinicians, or a clinician and a sweep, ending one visit meet here.
SELECT id FROM visits WHERE id = $1 FOR UPDATE;

-- name: end_visit
-- Run after lock_visit, in its transaction (a fresh statement, so an end committed while we waited is seen):
-- the `visit_ended` event, its write-back outbox row, and the visit_ends row, unless the visit has ended.
-- $2 the clinician who ended it (NULL for a sweep), $3 the reason. No row back: it had ended already.
WITH facts AS (
    SELECT NOT EXISTS (SELECT 1 FROM presence_events e JOIN participants p ON p.id = e.participant_id
                       WHERE e.visit_id = $1 AND p.role = 'patient'
                         AND e.kind IN ('lobby_entered', 'connected', 'admitted')) AS no_show
), event AS (
    INSERT INTO presence_events (visit_id, participant_id, kind)
    SELECT $1, $2, 'visit_ended'
    WHERE NOT EXISTS (SELECT 1 FROM visit_ends WHERE visit_id = $1)
    RETURNING id, at, visit_id
), outbox AS (
    INSERT INTO writeback_outbox (event_id, visit_id, configuration_id)
    SELECT event.id, event.visit_id, v.configuration_id
    FROM event JOIN visits v ON v.id = event.visit_id JOIN configurations c ON c.id = v.configuration_id
    WHERE c.writeback_strategy <> 'none'
), ended AS (
    INSERT INTO visit_ends (visit_id, event_id, reason, no_show, ended_by, ended_at)
    SELECT $1, event.id, $3, facts.no_show, $2, event.at FROM event, facts
    RETURNING no_show
)
SELECT event.id, event.at, ended.no_show FROM event, ended;

-- name: visit_end
SELECT event_id, reason, no_show, ended_at FROM visit_ends WHERE visit_id = $1;

-- name: sweep_lock
-- One sweeper at a time across every gateway process, for this transaction; the others skip their turn.
SELECT pg_try_advisory_xact_lock(7316001);

-- name: due_visits
-- Visits not ended that are due to end: their window (or, unknown, a day after the visit was made) plus
-- $1 seconds of grace has passed, or, once both sides were present, no socket has been open for $2 seconds.
-- Only visits made in the last $3 seconds are looked at (older ones were due long ago and ended then).
WITH open_visits AS (
    SELECT v.id, coalesce(v.window_end, v.created_at + interval '24 hours') AS window_end
    FROM visits v
    WHERE v.created_at > now() - make_interval(secs => $3)
      AND NOT EXISTS (SELECT 1 FROM visit_ends x WHERE x.visit_id = v.id)
), facts AS (
    SELECT o.id, o.window_end, s.*
    FROM open_visits o
    CROSS JOIN LATERAL (
        SELECT max(e.at) AS last_at,
               count(*) FILTER (WHERE e.kind IN ('connected', 'lobby_entered'))
                 - count(*) FILTER (WHERE e.kind IN ('disconnected', 'left')) AS open_sockets,
               -- Started: a clinician and a patient or guest were both connected (a patient's room socket
               -- opens only once admitted); a patient testing devices early in the lobby has not started it.
               bool_or(p.role = 'provider' AND e.kind = 'connected') AS provider_came,
               bool_or(p.role <> 'provider' AND e.kind = 'connected') AS others_came
        FROM presence_events e LEFT JOIN participants p ON p.id = e.participant_id
        WHERE e.visit_id = o.id
    ) s
)
SELECT id, CASE WHEN window_end + make_interval(secs => $1) < now() THEN 'window' ELSE 'idle' END AS reason
FROM facts
WHERE window_end + make_interval(secs => $1) < now()
   OR (coalesce(provider_came, false) AND coalesce(others_came, false) AND open_sockets <= 0
       AND last_at < now() - make_interval(secs => $2))
ORDER BY id
LIMIT $4;
