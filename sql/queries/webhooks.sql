-- name: add_endpoint
INSERT INTO webhook_endpoints (organisation_id, url, event_types, secret)
SELECT o.id, $2, $3, $4 FROM organisations o WHERE o.slug = $1
RETURNING id;

-- name: list_endpoints
SELECT e.id, o.slug, e.url, e.event_types, e.created_at, e.disabled_reason, e.disabled_at
FROM webhook_endpoints e JOIN organisations o ON o.id = e.organisation_id
WHERE e.removed_at IS NULL AND ($1::text IS NULL OR o.slug = $1)
ORDER BY e.id;

-- name: remove_endpoint
UPDATE webhook_endpoints SET removed_at = now() WHERE id = $1 AND removed_at IS NULL RETURNING id;

-- name: enable_endpoint
UPDATE webhook_endpoints SET disabled_reason = NULL, disabled_at = NULL
WHERE id = $1 AND removed_at IS NULL AND disabled_reason IS NOT NULL
RETURNING id;

-- name: endpoint
SELECT id, organisation_id, url, event_types, secret, disabled_reason FROM webhook_endpoints
WHERE id = $1 AND removed_at IS NULL;

-- name: lock_follower
-- One follower at a time across processes; the others skip their turn.
SELECT last_id, gap_snapshot, gap_upto FROM webhook_follower FOR UPDATE SKIP LOCKED;

-- name: any_endpoint
SELECT EXISTS (SELECT 1 FROM webhook_endpoints WHERE removed_at IS NULL AND disabled_reason IS NULL);

-- name: move_follower
UPDATE webhook_follower SET last_id = $1, gap_snapshot = $2, gap_upto = $3;

-- name: events_for_webhooks
-- Events after the follower's position, with what a payload may carry and the organisation to send to.
SELECT e.id, e.visit_id, e.participant_id, e.kind, e.at, p.role, c.organisation_id,
       x.reason AS end_reason, x.no_show
FROM presence_events e
JOIN visits v ON v.id = e.visit_id
JOIN configurations c ON c.id = v.configuration_id
LEFT JOIN participants p ON p.id = e.participant_id
LEFT JOIN visit_ends x ON x.event_id = e.id
WHERE e.id > $1
ORDER BY e.id
LIMIT $2;

-- name: subscribed_endpoints
-- The live endpoints of organisations ($1) subscribed to anything.
SELECT id, organisation_id, event_types FROM webhook_endpoints
WHERE organisation_id = ANY($1::bigint[]) AND removed_at IS NULL AND disabled_reason IS NULL;

-- name: visit_endpoints
-- The live endpoints of a visit's organisation subscribed to event type $2 (none when its configuration has no
-- organisation: an operator made it).
SELECT e.id FROM webhook_endpoints e
JOIN configurations c ON c.organisation_id = e.organisation_id
JOIN visits v ON v.configuration_id = c.id
WHERE v.id = $1 AND $2 = ANY(e.event_types) AND e.removed_at IS NULL AND e.disabled_reason IS NULL;

-- name: configuration_endpoints
-- The live endpoints of a configuration's organisation subscribed to event type $2 (for launch failures).
SELECT e.id FROM webhook_endpoints e
JOIN configurations c ON c.organisation_id = e.organisation_id
WHERE c.id = $1 AND $2 = ANY(e.event_types) AND e.removed_at IS NULL AND e.disabled_reason IS NULL;

-- name: both_sides_connected
-- Whether, up to event $2, a clinician and a patient or guest of the visit have both connected (it started).
SELECT bool_or(p.role = 'provider') AND bool_or(p.role <> 'provider')
FROM presence_events e JOIN participants p ON p.id = e.participant_id
WHERE e.visit_id = $1 AND e.id <= $2 AND e.kind = 'connected';

-- name: enqueue
-- A message id is chosen from what it is about, so reading the same event again enqueues nothing new.
INSERT INTO webhook_outbox (endpoint_id, message_id, event_type, payload, available_at)
VALUES ($1, $2, $3, $4, coalesce($5::timestamptz, now()))
ON CONFLICT (endpoint_id, message_id) DO NOTHING
RETURNING id;

-- name: claim_messages
-- Due messages of live endpoints, leased to this worker for $2 seconds (another worker skips them meanwhile).
UPDATE webhook_outbox m SET available_at = now() + make_interval(secs => $2), attempts = m.attempts + 1
WHERE m.id IN (
    SELECT o.id FROM webhook_outbox o JOIN webhook_endpoints e ON e.id = o.endpoint_id
    WHERE o.state = 'pending' AND o.available_at <= now() AND e.removed_at IS NULL AND e.disabled_reason IS NULL
    ORDER BY o.available_at
    LIMIT $1
    FOR UPDATE OF o SKIP LOCKED
)
RETURNING m.id, m.endpoint_id, m.message_id, m.event_type, m.payload, m.attempts, m.created_at;

-- name: claim_message
-- One message, now (a test send from the command line), leased as claim_messages does.
UPDATE webhook_outbox m SET available_at = now() + make_interval(secs => $2), attempts = m.attempts + 1
WHERE m.id = $1 AND m.state = 'pending'
RETURNING m.id, m.endpoint_id, m.message_id, m.event_type, m.payload, m.attempts, m.created_at;

-- name: record_attempt
INSERT INTO webhook_attempts (message_id, endpoint_id, status_code, error, duration_ms) VALUES ($1, $2, $3, $4, $5);

-- name: delivered
UPDATE webhook_outbox SET state = 'delivered', finished_at = now() WHERE id = $1;

-- name: retry_later
UPDATE webhook_outbox SET available_at = now() + make_interval(secs => $2) WHERE id = $1;

-- name: give_up
-- The message failed for the whole retry window: it fails, and its endpoint is disabled with why and when.
WITH failed AS (
    UPDATE webhook_outbox SET state = 'failed', finished_at = now() WHERE id = $1 RETURNING endpoint_id
)
UPDATE webhook_endpoints SET disabled_reason = $2, disabled_at = now()
WHERE id = (SELECT endpoint_id FROM failed) AND disabled_reason IS NULL;

-- name: delivery_log
SELECT a.at, m.message_id, m.event_type, a.status_code, a.error, a.duration_ms
FROM webhook_attempts a JOIN webhook_outbox m ON m.id = a.message_id
WHERE a.endpoint_id = $1
ORDER BY a.id DESC
LIMIT $2;
