-- The appointment feed and its schedule of confirmations and reminders.

-- name: get_feed
SELECT configuration_id, mllp_host, mllp_port, mllp_tls_cert, mllp_tls_key, fhir_polling, poll_interval,
       poll_watermark, reminder_offsets, messages, channels
FROM appointment_feeds WHERE configuration_id = $1;

-- name: set_feed
INSERT INTO appointment_feeds (configuration_id, mllp_host, mllp_port, mllp_tls_cert, mllp_tls_key, fhir_polling,
                               poll_interval, reminder_offsets, messages, channels)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
ON CONFLICT (configuration_id) DO UPDATE
SET mllp_host = EXCLUDED.mllp_host, mllp_port = EXCLUDED.mllp_port, mllp_tls_cert = EXCLUDED.mllp_tls_cert,
    mllp_tls_key = EXCLUDED.mllp_tls_key, fhir_polling = EXCLUDED.fhir_polling,
    poll_interval = EXCLUDED.poll_interval, reminder_offsets = EXCLUDED.reminder_offsets,
    messages = EXCLUDED.messages, channels = EXCLUDED.channels, updated_at = now();

-- name: active_feeds
-- Feeds of approved configurations, with what the gateway needs to reach their EHR.
SELECT f.configuration_id, f.mllp_host, f.mllp_port, f.mllp_tls_cert, f.mllp_tls_key, f.fhir_polling,
       f.poll_interval, f.reminder_offsets, f.messages, f.channels,
       c.fhir_base_url, c.client_id, c.client_auth, c.meeting_provider
FROM appointment_feeds f JOIN configurations c ON c.id = f.configuration_id
WHERE c.status = 'approved'
ORDER BY f.configuration_id;

-- name: note_control_id
-- One round trip per SIU message: the feed's current settings (a change made a moment ago counts; not locked,
-- as FOR SHARE by every concurrent message would pile MultiXacts onto one row), and the message control id
-- (MSH-10) remembered, first_time false when it was seen before. No row: the feed is gone or not approved
-- (and the control id is not kept).
WITH feed AS (
    SELECT f.configuration_id, f.mllp_host, f.mllp_port, f.mllp_tls_cert, f.mllp_tls_key, f.fhir_polling,
           f.poll_interval, f.reminder_offsets, f.messages, f.channels,
           c.fhir_base_url, c.client_id, c.client_auth, c.meeting_provider
    FROM appointment_feeds f JOIN configurations c ON c.id = f.configuration_id
    WHERE f.configuration_id = $1 AND c.status = 'approved'
), seen AS (
    INSERT INTO hl7_control_ids (configuration_id, control_id)
    SELECT configuration_id, $2 FROM feed
    ON CONFLICT DO NOTHING
    RETURNING control_id
)
SELECT feed.*, EXISTS (SELECT 1 FROM seen) AS first_time FROM feed;

-- name: forget_control_ids
DELETE FROM hl7_control_ids WHERE received_at < now() - make_interval(days => $1);

-- name: upsert_appointment
-- The appointment's row, created if new, locked either way (the no-op update takes the row lock as FOR UPDATE
-- would), with the values it had before this message; inserted says which (xmax is 0 on a fresh insert).
INSERT INTO appointments (configuration_id, appointment_key, appointment_ref, patient_ref, encounter_ref,
                          starts_at, ends_at, status, source_time)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
ON CONFLICT (configuration_id, appointment_key) DO UPDATE SET configuration_id = EXCLUDED.configuration_id
RETURNING id, (xmax = 0) AS inserted, starts_at, ends_at, status, source_time, revision, patient_ref,
          encounter_ref;

-- name: update_appointment
UPDATE appointments
SET starts_at = $2, ends_at = $3, status = $4, source_time = $5, revision = revision + 1,
    patient_ref = COALESCE($6, patient_ref), encounter_ref = COALESCE($7, encounter_ref), updated_at = now()
WHERE id = $1
RETURNING revision;

-- name: withdraw_moved
-- A change: pending confirmations of earlier revisions, and pending reminders for another start, go.
UPDATE appointment_messages
SET state = 'withdrawn', done_at = now(), outcome = $3
WHERE appointment_id = $1 AND state = 'pending'
  AND ((kind = 'reminder' AND starts_at <> $2) OR (kind <> 'reminder'));

-- name: withdraw_all
-- A cancellation: everything still pending goes.
UPDATE appointment_messages
SET state = 'withdrawn', done_at = now(), outcome = $2
WHERE appointment_id = $1 AND state = 'pending';

-- name: plan_messages
-- Exactly one row per (appointment, kind, offset, channel, revision, start): planning one again does nothing,
-- unless an earlier change withdrew it (a cancelled appointment booked again for the same time). All of one
-- appointment's messages in one statement ($3.. are parallel arrays).
INSERT INTO appointment_messages (appointment_id, kind, offset_minutes, channel, revision, starts_at, due_at)
SELECT $1, t.kind, t.offset_minutes, t.channel, t.revision, $2, t.due_at
FROM unnest($3::text[], $4::integer[], $5::text[], $6::integer[], $7::timestamptz[])
    AS t(kind, offset_minutes, channel, revision, due_at)
ON CONFLICT (appointment_id, kind, offset_minutes, channel, revision, starts_at) DO UPDATE
SET state = 'pending', due_at = EXCLUDED.due_at, done_at = NULL, outcome = NULL
WHERE appointment_messages.state = 'withdrawn';

-- name: claim_due
-- Lease up to $1 messages that are due (or whose claimant's lease lapsed) to worker $2 for $3 seconds.
WITH due AS (
    SELECT id FROM appointment_messages
    WHERE (state = 'pending' AND due_at <= now()) OR (state = 'sending' AND claimed_until < now())
    ORDER BY due_at
    LIMIT $1
    FOR UPDATE SKIP LOCKED
)
UPDATE appointment_messages m
SET state = 'sending', claimed_by = $2, claimed_until = now() + make_interval(secs => $3),
    attempts = m.attempts + 1, first_tried_at = COALESCE(m.first_tried_at, now())
FROM due
WHERE m.id = due.id
RETURNING m.id, m.appointment_id, m.kind, m.offset_minutes, m.channel, m.revision, m.starts_at, m.attempts,
          m.first_tried_at;

-- name: message_context
-- What the sender needs of a claimed message's appointment and configuration.
SELECT a.id, a.configuration_id, a.appointment_ref, a.patient_ref, a.encounter_ref, a.starts_at, a.ends_at,
       a.status, a.revision, c.fhir_base_url, c.client_id, c.client_auth, c.meeting_provider
FROM appointments a JOIN configurations c ON c.id = a.configuration_id
WHERE a.id = $1;

-- name: remember_refs
UPDATE appointments SET patient_ref = COALESCE(patient_ref, $2), encounter_ref = COALESCE(encounter_ref, $3)
WHERE id = $1;

-- name: finish_message
-- Sent, skipped or failed: only by the worker that holds the claim.
UPDATE appointment_messages
SET state = $3, done_at = now(), outcome = $4, claimed_until = NULL
WHERE id = $1 AND state = 'sending' AND claimed_by = $2
RETURNING id;

-- name: finish_sent
-- Sent, only by the worker that holds the claim, with the visit the message was about ($3; none when no
-- visit is known): the sender counts it on that visit's usage row in the same transaction (gateway.sent_counts).
UPDATE appointment_messages
SET state = 'sent', done_at = now(), outcome = NULL, claimed_until = NULL, visit_id = $3
WHERE id = $1 AND state = 'sending' AND claimed_by = $2
RETURNING id;

-- name: visit_of_encounter
-- The visit of an encounter if one was made (a message without a join link makes none).
SELECT id FROM visits WHERE configuration_id = $1 AND encounter_key = $2;

-- name: retry_message
UPDATE appointment_messages
SET state = 'pending', due_at = now() + make_interval(secs => $3), claimed_by = NULL, claimed_until = NULL,
    outcome = $4
WHERE id = $1 AND state = 'sending' AND claimed_by = $2
RETURNING id;

-- name: find_or_create_visit
-- The visit of the appointment's encounter: the same row a provider launch for that encounter finds.
INSERT INTO visits (configuration_id, encounter_key, encounter_ref, patient_ref, meeting_provider)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (configuration_id, encounter_key)
    DO UPDATE SET configuration_id = EXCLUDED.configuration_id
RETURNING id;

-- name: claim_poll
-- This process polls the configuration's FHIR server now, if no process did within its interval.
UPDATE appointment_feeds
SET poll_due_at = now() + make_interval(secs => poll_interval)
WHERE configuration_id = $1 AND fhir_polling AND COALESCE(poll_due_at, '-infinity') <= now()
RETURNING poll_watermark;

-- name: advance_watermark
UPDATE appointment_feeds SET poll_watermark = GREATEST(COALESCE(poll_watermark, $2), $2)
WHERE configuration_id = $1;

-- name: schedule_of
-- The schedule of one appointment (tests, the CLI): kinds, offsets, channels, states; nothing about the patient.
SELECT m.kind, m.offset_minutes, m.channel, m.revision, m.starts_at, m.due_at, m.state, m.outcome, m.attempts
FROM appointment_messages m
WHERE m.appointment_id = $1
ORDER BY m.created_at, m.kind, m.offset_minutes, m.channel;

-- name: find_appointment
SELECT id FROM appointments WHERE configuration_id = $1 AND appointment_key = $2;
