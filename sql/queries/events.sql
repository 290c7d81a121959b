-- name: append_event
-- The event and, when the visit's configuration writes back to FHIR, its outbox row: one statement, so
-- one transaction (the write-back worker reads the outbox; see writeback.sql).
-- $4, when given, is the process holding the socket this event opens or closes (see 0007): the event is
-- written only while that process still holds its lease. KEY SHARE on the lease row makes a sweep of that
-- process wait for this insert, and an insert after the sweep finds no row and writes nothing (no row comes
-- back). So each socket's closing event is written once, by its own process or by the sweep, never by both.
-- $5 is when it happened (NULL: now), for an event written late because the database was away; $6 its
-- idempotency key (see 0011): an event already written under that key is not written again (no row back).
WITH holder AS (
    SELECT id FROM presence_processes WHERE id = $4 FOR KEY SHARE
), event AS (
    INSERT INTO presence_events (visit_id, participant_id, kind, process_id, at, idempotency_key)
    SELECT $1, $2, $3, $4::uuid, coalesce($5::timestamptz, now()), $6::uuid
    WHERE $4::uuid IS NULL OR EXISTS (SELECT 1 FROM holder)
    ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
    RETURNING id, at, visit_id
), outbox AS (
    INSERT INTO writeback_outbox (event_id, visit_id, configuration_id)
    SELECT event.id, event.visit_id, v.configuration_id
    FROM event JOIN visits v ON v.id = event.visit_id JOIN configurations c ON c.id = v.configuration_id
    WHERE c.writeback_strategy <> 'none'
)
SELECT id, at FROM event;

-- name: take_lease
INSERT INTO presence_processes (id) VALUES ($1);

-- name: renew_lease
-- No row: the lease lapsed and another process has closed this one's sockets in the event log.
UPDATE presence_processes SET renewed_at = now() WHERE id = $1 RETURNING id;

-- name: lapsed_lease
-- One process whose lease ran out ($1 seconds without renewal), locked for this sweep; a process another
-- sweeper has, or one whose socket event is being written this instant, is skipped (taken next time).
SELECT id, renewed_at FROM presence_processes
WHERE renewed_at < now() - make_interval(secs => $1)
ORDER BY renewed_at
LIMIT 1
FOR UPDATE SKIP LOCKED;

-- name: own_lease
-- This process's own lease, at a clean stop: waits for its last socket events in flight.
SELECT id, now() AS renewed_at FROM presence_processes WHERE id = $1 FOR UPDATE;

-- name: close_orphans
-- The closing events a process never wrote: for each participant, as many `left` as lobby sockets it opened
-- and did not close and as many `disconnected` as room and view sockets; each at the last time anything is
-- known of that participant or of the process ($2), never before an event it closes. With their outbox rows.
WITH held AS (
    SELECT e.visit_id, e.participant_id,
           count(*) FILTER (WHERE e.kind = 'lobby_entered') - count(*) FILTER (WHERE e.kind = 'left') AS lobbies,
           count(*) FILTER (WHERE e.kind = 'connected') - count(*) FILTER (WHERE e.kind = 'disconnected') AS rooms
    FROM presence_events e
    WHERE e.process_id = $1
    GROUP BY e.visit_id, e.participant_id
), closing AS (
    SELECT h.visit_id, h.participant_id, c.kind,
           greatest($2::timestamptz, (SELECT max(x.at) FROM presence_events x
                                      WHERE x.visit_id = h.visit_id AND x.participant_id = h.participant_id)) AS at
    FROM held h
    CROSS JOIN LATERAL (
        SELECT 'disconnected' AS kind, n FROM generate_series(1, h.rooms) AS n
        UNION ALL
        SELECT 'left', n FROM generate_series(1, h.lobbies) AS n
    ) AS c
), event AS (
    INSERT INTO presence_events (visit_id, participant_id, kind, at, process_id)
    SELECT visit_id, participant_id, kind, at, $1 FROM closing
    RETURNING id, visit_id
), outbox AS (
    INSERT INTO writeback_outbox (event_id, visit_id, configuration_id)
    SELECT event.id, event.visit_id, v.configuration_id
    FROM event JOIN visits v ON v.id = event.visit_id JOIN configurations c ON c.id = v.configuration_id
    WHERE c.writeback_strategy <> 'none'
)
SELECT id FROM event;

-- name: end_lease
DELETE FROM presence_processes WHERE id = $1;

-- name: events_after
SELECT e.id, e.visit_id, e.participant_id, e.kind, e.at, p.role, p.guest_kind, e.detail
FROM presence_events e LEFT JOIN participants p ON p.id = e.participant_id
WHERE e.visit_id = $1 AND e.id > $2 AND e.id <= $3
ORDER BY e.id
LIMIT $4;

-- name: events_of_visits
-- For a clinic queue's snapshot: the events of several visits ($1) up to $2, in id order (served by
-- presence_events_visit, one range per visit).
SELECT e.id, e.visit_id, e.participant_id, e.kind, e.at, p.role, p.guest_kind, e.detail
FROM presence_events e LEFT JOIN participants p ON p.id = e.participant_id
WHERE e.visit_id = ANY($1::uuid[]) AND e.id <= $2
ORDER BY e.id
LIMIT $3;

-- name: events_by_id_after
-- For the bus: every event after the last one a process has seen, across visits.
SELECT e.id, e.visit_id, e.participant_id, e.kind, e.at, p.role, p.guest_kind, e.detail
FROM presence_events e LEFT JOIN participants p ON p.id = e.participant_id
WHERE e.id > $1
ORDER BY e.id
LIMIT $2;

-- name: writers_snapshot
-- For the presence bus at a gap in the ids: the transactions running now (any that still holds the missing
-- id among them), and whether there are none at all.
SELECT pg_current_snapshot()::text AS snapshot,
       cardinality(ARRAY(SELECT pg_snapshot_xip(pg_current_snapshot()))) = 0 AS none_running;

-- name: writers_finished
-- Whether every transaction running when that snapshot was taken has ended (committed or rolled back).
-- $1 is the snapshot as text (writers_snapshot's): bound as pg_snapshot, asyncpg wants a tuple and refuses it.
SELECT NOT EXISTS (SELECT 1 FROM pg_snapshot_xip($1::text::pg_snapshot) AS x WHERE pg_xact_status(x) = 'in progress');

-- name: last_event_id
SELECT coalesce(max(id), 0) FROM presence_events;

-- name: notify_events
-- One simple-protocol round trip, {event_id} an integer formatted in by presence.eventlog. The notification's own
-- transaction skips the wait for its WAL flush: listeners see a NOTIFY only once its transaction counts as
-- committed, so a durable commit would hold every wake-up back by one disk flush, and nothing in it needs to
-- survive a crash (the events are durable already; listeners catch up by id).
SET LOCAL synchronous_commit = off; SELECT pg_notify('presence_events', '{event_id}');

-- name: latest_device_test
-- The participant's latest device test result, so the same result sent again is not stored again: read
-- newest first through presence_events_visit (visit_id, id), within the participant's own visit.
SELECT e.kind
FROM presence_events e
WHERE e.visit_id = (SELECT p.visit_id FROM participants p WHERE p.id = $1)
  AND e.participant_id = $1
  AND e.kind IN ('device_test_passed', 'device_test_failed')
ORDER BY e.id DESC
LIMIT 1;

-- name: latest_device_result
-- The participant's latest device test result and what it found (see 0016), as latest_device_test reads it.
SELECT e.kind, e.detail
FROM presence_events e
WHERE e.visit_id = (SELECT p.visit_id FROM participants p WHERE p.id = $1)
  AND e.participant_id = $1
  AND e.kind IN ('device_test_passed', 'device_test_failed')
ORDER BY e.id DESC
LIMIT 1;

-- name: append_device_test
-- A device test's event with what it found ($4, see 0016) and, when the visit's configuration writes back,
-- its outbox row: one statement, as append_event.
WITH event AS (
    INSERT INTO presence_events (visit_id, participant_id, kind, detail)
    VALUES ($1, $2, $3, $4::jsonb)
    RETURNING id, visit_id
), outbox AS (
    INSERT INTO writeback_outbox (event_id, visit_id, configuration_id)
    SELECT event.id, event.visit_id, v.configuration_id
    FROM event JOIN visits v ON v.id = event.visit_id JOIN configurations c ON c.id = v.configuration_id
    WHERE c.writeback_strategy <> 'none'
)
SELECT id FROM event;
