-- Live presence from Microsoft Teams (presence.teams_events): subscriptions, the notification queue, and who a
-- Teams identity is in our visit. See 0028.

-- name: create_subscription
-- A pending subscription for the visit's meeting, unless the visit has a live one already (then no row).
INSERT INTO graph_subscriptions (visit_id, tenant_key, organizer_id, meeting_id, join_web_url)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (visit_id) WHERE status IN ('pending', 'active') DO NOTHING
RETURNING id;

-- name: abandon_stale_pending
-- A pending subscription whose process died between asking Graph and hearing back (Graph answers within
-- seconds; its handshake has ten) is given up, so the visit can be subscribed again.
UPDATE graph_subscriptions SET status = 'failed'
WHERE visit_id = $1 AND status = 'pending' AND created_at < now() - interval '2 minutes';

-- name: activate_subscription
UPDATE graph_subscriptions SET graph_id = $2, expires_at = $3, status = 'active' WHERE id = $1;

-- name: set_subscription_status
UPDATE graph_subscriptions SET status = $2, renewing_until = NULL WHERE id = $1;

-- name: subscription
SELECT id, graph_id, visit_id, tenant_key, organizer_id, meeting_id, join_web_url, status, expires_at
FROM graph_subscriptions WHERE id = $1;

-- name: live_subscription_for_visit
SELECT id, graph_id, visit_id, tenant_key, organizer_id, meeting_id, join_web_url, status, expires_at
FROM graph_subscriptions WHERE visit_id = $1 AND status IN ('pending', 'active');

-- name: latest_subscription_for_visit
SELECT id, graph_id, visit_id, tenant_key, organizer_id, meeting_id, join_web_url, status, expires_at
FROM graph_subscriptions WHERE visit_id = $1 ORDER BY created_at DESC LIMIT 1;

-- name: enqueue_notifications
-- What the webhook accepted, in one statement for a whole batch of requests (the intake's group commit).
-- A notification received before (the same digest) is not queued again.
INSERT INTO graph_notifications (digest, subscription_id, body)
SELECT d, s, b::jsonb FROM unnest($1::bytea[], $2::uuid[], $3::text[]) AS n (d, s, b)
ON CONFLICT (digest) DO NOTHING;

-- name: claim_notifications
-- The oldest unprocessed notifications that are due, held by this worker for $2 seconds (another process
-- takes them over after that if this one died).
UPDATE graph_notifications SET attempts = attempts + 1, not_before = now() + make_interval(secs => $2)
WHERE id IN (SELECT id FROM graph_notifications
             WHERE processed_at IS NULL AND not_before <= now()
             ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED)
RETURNING id, subscription_id, body, attempts, received_at;

-- name: finish_notification
-- Processed: the encrypted body is dropped, the digest stays a day against Graph sending it again.
UPDATE graph_notifications SET processed_at = now(), outcome = $2, body = NULL WHERE id = $1;

-- name: purge_notifications
DELETE FROM graph_notifications WHERE processed_at < now() - make_interval(secs => $1);

-- name: due_renewals
-- Active subscriptions expiring within $1 seconds, claimed for a minute by this process.
UPDATE graph_subscriptions SET renewing_until = now() + interval '60 seconds'
WHERE id IN (SELECT id FROM graph_subscriptions
             WHERE status = 'active' AND expires_at < now() + make_interval(secs => $1)
               AND (renewing_until IS NULL OR renewing_until < now())
             ORDER BY expires_at LIMIT 20 FOR UPDATE SKIP LOCKED)
RETURNING id, graph_id, visit_id, tenant_key, organizer_id, meeting_id, join_web_url, status, expires_at;

-- name: renewed
UPDATE graph_subscriptions SET expires_at = $2, renewing_until = NULL WHERE id = $1;

-- name: schedule_reconcile
-- Read the attendance report from $2 on (the earliest request wins while one is pending).
UPDATE graph_subscriptions SET reconcile_due = least(coalesce(reconcile_due, $2), $2) WHERE id = $1;

-- name: due_reconciliations
UPDATE graph_subscriptions SET reconcile_due = now() + interval '60 seconds'
WHERE id IN (SELECT id FROM graph_subscriptions WHERE reconcile_due <= now()
             ORDER BY reconcile_due LIMIT 10 FOR UPDATE SKIP LOCKED)
RETURNING id, graph_id, visit_id, tenant_key, organizer_id, meeting_id, join_web_url, status, expires_at;

-- name: reconciled
UPDATE graph_subscriptions SET reconcile_due = NULL, reconciled_at = now(), reconcile_attempts = 0 WHERE id = $1;

-- name: report_not_ready
-- Graph has not produced the attendance report yet: read it again $2 seconds times 2^(reads so far) on, while
-- fewer than $3 reads were made; after that, given up (as reconciled: what came live is what there is, and the
-- count starts afresh for a later reading). Answers whether it is read again.
UPDATE graph_subscriptions
SET reconcile_attempts = CASE WHEN reconcile_attempts + 1 < $3 THEN reconcile_attempts + 1 ELSE 0 END,
    reconcile_due = CASE WHEN reconcile_attempts + 1 < $3
                         THEN now() + make_interval(secs => $2 * power(2, reconcile_attempts)) END,
    reconciled_at = CASE WHEN reconcile_attempts + 1 < $3 THEN reconciled_at ELSE now() END
WHERE id = $1
RETURNING reconcile_due IS NOT NULL AS again;

-- name: teams_participant
SELECT participant_id FROM teams_participants WHERE visit_id = $1 AND identity_key = $2;

-- name: map_teams_participant
-- First mapping wins: a racing worker gets the one already made (no row back, then teams_participant).
INSERT INTO teams_participants (visit_id, identity_key, participant_id) VALUES ($1, $2, $3)
ON CONFLICT (visit_id, identity_key) DO NOTHING
RETURNING participant_id;

-- name: unmatched_lobby_participants
-- The visit's patient and guests who came through our lobby and are not yet matched to a Teams identity: the
-- first handed over to Teams (left the lobby first) first; the patient before guests at a tie.
SELECT p.id
FROM participants p
WHERE p.visit_id = $1 AND p.role <> 'provider'
  AND EXISTS (SELECT 1 FROM presence_events e
              WHERE e.visit_id = $1 AND e.participant_id = p.id AND e.kind = 'lobby_entered')
  AND NOT EXISTS (SELECT 1 FROM teams_participants t WHERE t.participant_id = p.id)
ORDER BY (SELECT max(e.at) FROM presence_events e
          WHERE e.visit_id = $1 AND e.participant_id = p.id AND e.kind = 'left') NULLS LAST,
         (p.role = 'patient') DESC, p.created_at;

-- name: first_provider
SELECT id FROM participants WHERE visit_id = $1 AND role = 'provider' ORDER BY created_at LIMIT 1;

-- name: events_near
-- Whether the participant has an event of kind $3 between $4 and $5 (reconciliation: was this stretch seen?).
SELECT EXISTS (SELECT 1 FROM presence_events
               WHERE visit_id = $1 AND participant_id = $2 AND kind = $3 AND at BETWEEN $4 AND $5);

-- name: end_subscriptions
-- Subscriptions of visits that have ended (visit_ends' primary key answers each EXISTS): Graph need send nothing
-- more, and the attendance report is read $1 seconds on (unless a reading is already due sooner), also for a
-- meeting whose subscription Graph refused (nothing reached us live: the report is all there is).
UPDATE graph_subscriptions s
SET status = 'ended', renewing_until = NULL,
    reconcile_due = least(coalesce(s.reconcile_due, now() + make_interval(secs => $1)),
                          now() + make_interval(secs => $1))
WHERE s.status IN ('pending', 'active', 'failed')
  AND EXISTS (SELECT 1 FROM visit_ends e WHERE e.visit_id = s.visit_id)
RETURNING id, graph_id, visit_id, tenant_key, organizer_id, meeting_id, join_web_url, status, expires_at;

-- name: due_resubscriptions
-- Visits whose latest subscription Graph refused (or never answered) in the last day, not ended: tried again $1
-- seconds after the first failure, then twice as long after each, five times at most. Two processes that pick
-- the same visit make one subscription (create_subscription's unique index).
SELECT f.id, f.graph_id, f.visit_id, f.tenant_key, f.organizer_id, f.meeting_id, f.join_web_url, f.status,
       f.expires_at
FROM graph_subscriptions f
CROSS JOIN LATERAL (SELECT count(*) AS n FROM graph_subscriptions c
                    WHERE c.visit_id = f.visit_id AND c.status = 'failed') AS failures
WHERE f.status = 'failed' AND f.created_at > now() - interval '1 day'
  AND failures.n < 5
  AND f.created_at < now() - make_interval(secs => $1 * power(2, failures.n - 1))
  AND NOT EXISTS (SELECT 1 FROM graph_subscriptions later
                  WHERE later.visit_id = f.visit_id AND later.created_at > f.created_at)
  AND NOT EXISTS (SELECT 1 FROM visit_ends e WHERE e.visit_id = f.visit_id)
ORDER BY f.created_at
LIMIT 10;
