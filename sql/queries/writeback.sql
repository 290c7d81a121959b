-- Write-back of presence events to FHIR Encounters: the outbox, its dead letters and the attempts audit.

-- name: active_configurations
-- Configurations whose events the worker writes back now.
SELECT id, fhir_base_url, client_id, client_auth, writeback_strategy, writeback_scopes
FROM configurations
WHERE status = 'approved' AND writeback_strategy <> 'none' AND writeback_disabled_reason IS NULL
ORDER BY id;

-- name: set_strategy
UPDATE configurations
SET writeback_strategy = $2, writeback_disabled_reason = NULL, writeback_disabled_at = NULL
WHERE id = $1;

-- name: disable
UPDATE configurations SET writeback_disabled_reason = $2, writeback_disabled_at = now()
WHERE id = $1 AND writeback_disabled_reason IS NULL
RETURNING id;

-- name: claim_visits
-- Lease up to $2 visits of configuration $1 for $3 seconds, through each visit's oldest pending row.
-- A row is a visit's head when no older row of that visit is pending, so one worker holds a visit at a time.
WITH heads AS (
    SELECT o.event_id
    FROM writeback_outbox o
    WHERE o.configuration_id = $1 AND o.state = 'pending' AND o.available_at <= now()
      AND NOT EXISTS (SELECT 1 FROM writeback_outbox older
                      WHERE older.visit_id = o.visit_id AND older.state = 'pending'
                        AND older.event_id < o.event_id)
    ORDER BY o.event_id
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)
UPDATE writeback_outbox o
SET available_at = now() + make_interval(secs => $3), claimed_by = $4, attempts = o.attempts + 1
FROM heads
WHERE o.event_id = heads.event_id
RETURNING o.event_id, o.visit_id, o.attempts;

-- name: visit_events
-- Every event of the visit, as write-back reads them (tests compare the Encounter's history with it).
SELECT e.id, e.kind, e.at, e.participant_id, p.role, p.guest_kind, p.fhir_user, e.detail
FROM presence_events e LEFT JOIN participants p ON p.id = e.participant_id
WHERE e.visit_id = $1
ORDER BY e.id;

-- name: visit_with_events
-- Write-back derives the Encounter from the whole event log, never from a delta: the visit's sealed Encounter id and meeting provider with every event (one round trip); a visit without
-- events gives one row of NULL event columns.
SELECT v.encounter_ref, v.meeting_provider, e.id, e.kind, e.at, e.participant_id, p.role, p.guest_kind, p.fhir_user,
       e.detail
FROM visits v
LEFT JOIN presence_events e ON e.visit_id = v.id
LEFT JOIN participants p ON p.id = e.participant_id
WHERE v.id = $1
ORDER BY e.id;

-- name: finish_visit
-- Mark the visit's rows up to the events applied done, and record the attempt, in one statement.
WITH done AS (
    UPDATE writeback_outbox SET state = 'done', finished_at = now(), reason = NULL
    WHERE visit_id = $1 AND state = 'pending' AND event_id <= $2
)
INSERT INTO writeback_attempts (visit_id, configuration_id, up_to_event_id, strategy, outcome, http_status,
                                reason, version_id, duration_ms)
VALUES ($1, $3, $2, $4, $5, $6, NULL, $7, $8);

-- name: retry_visit
-- Back off: the head row becomes claimable again after $2 seconds.
UPDATE writeback_outbox SET available_at = now() + make_interval(secs => $2), reason = $3, claimed_by = NULL
WHERE event_id = $1 AND state = 'pending';

-- name: release_visit
-- Give a claim back untouched (write-back was turned off meanwhile): the attempt does not count.
UPDATE writeback_outbox SET available_at = now(), attempts = greatest(attempts - 1, 0)
WHERE event_id = $1 AND state = 'pending';

-- name: release_mine
-- On shutdown: the visits this worker still holds become claimable at once, not after their lease.
UPDATE writeback_outbox SET available_at = now(), claimed_by = NULL, attempts = greatest(attempts - 1, 0)
WHERE claimed_by = $1 AND state = 'pending' AND available_at > now();

-- name: dead_letter_visit
UPDATE writeback_outbox SET state = 'dead', finished_at = now(), reason = $3
WHERE visit_id = $1 AND state = 'pending' AND event_id <= $2
RETURNING event_id;

-- name: record_attempt
-- Append the attempt and, when it failed, count it for the error report by its reason's code ($10) in the
-- connection's bucket (one statement, so the count and the audit never disagree), on today in the
-- configuration's organisation's time zone, or the gateway's ($11) when it has none of its own or no organisation.
WITH attempt AS (
    INSERT INTO writeback_attempts (visit_id, configuration_id, up_to_event_id, strategy, outcome, http_status,
                                    reason, version_id, duration_ms)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
)
INSERT INTO writeback_failures (configuration_id, day, reason, outcome, bucket, count)
SELECT $2,
       (now() AT TIME ZONE coalesce((SELECT o.time_zone FROM configurations c
                                     JOIN organisations o ON o.id = c.organisation_id
                                     WHERE c.id = $2), $11::text))::date,
       $10, $5, (pg_backend_pid() % 64)::smallint, 1
WHERE $5 IN ('retry', 'dead', 'disabled')
ON CONFLICT (configuration_id, day, reason, outcome, bucket) DO UPDATE SET count = writeback_failures.count + 1;

-- name: dead_letters
SELECT event_id, visit_id, configuration_id, attempts, reason, finished_at
FROM writeback_outbox WHERE state = 'dead'
ORDER BY finished_at DESC
LIMIT $1;

-- name: backlog
SELECT count(*) FROM writeback_outbox WHERE configuration_id = $1 AND state = 'pending';

-- name: attempts_of_visit
SELECT id, at, up_to_event_id, strategy, outcome, http_status, reason, version_id, duration_ms
FROM writeback_attempts WHERE visit_id = $1 ORDER BY id;
