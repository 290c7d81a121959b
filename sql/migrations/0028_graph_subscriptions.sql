-- 0028: live presence from Microsoft Teams. The gateway subscribes to each Teams visit's meeting call events
-- (Graph change notifications with encrypted resource data), queues what Graph sends durably, and turns roster
-- changes into presence events. No patient data: Graph's and Entra's opaque ids (the organisation's tenant, the
-- organising clinician's object id, the meeting's id and join URL), times, and Teams identities only as keyed
-- digests. Names in the rosters are decrypted in memory and never written.

-- One subscription per Teams visit's meeting. Its clientState is derived from `id` with the gateway key
-- (presence.teams_events), so nothing secret is kept here.
CREATE TABLE graph_subscriptions (
    id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    graph_id       text,                 -- Graph's subscription id, once Graph has created it
    visit_id       uuid NOT NULL REFERENCES visits (id),
    tenant_key     text NOT NULL,        -- whose Teams application calls Graph for it: the organisation's id
    organizer_id   text NOT NULL,        -- the organising clinician's Entra object id (attendance reports)
    meeting_id     text NOT NULL,        -- Graph's onlineMeeting id (attendance reports)
    join_web_url   text NOT NULL,        -- the meeting's join URL (the subscription's resource)
    status         text NOT NULL DEFAULT 'pending'
                   CHECK (status IN ('pending', 'active', 'failed', 'removed', 'ended')),
    expires_at     timestamptz,
    renewing_until timestamptz,          -- a process renews it until then (claimed, so one process does)
    reconcile_due  timestamptz,          -- the attendance report is to be read from then on
    reconciled_at  timestamptz,
    created_at     timestamptz NOT NULL DEFAULT now()
);
-- serves: graph_events.create_subscription (one live subscription per visit, however many launches at once)
CREATE UNIQUE INDEX graph_subscriptions_visit ON graph_subscriptions (visit_id) WHERE status IN ('pending', 'active');
-- serves: graph_events.subscription_by_graph_id
CREATE UNIQUE INDEX graph_subscriptions_graph_id ON graph_subscriptions (graph_id) WHERE graph_id IS NOT NULL;
-- serves: graph_events.due_renewals
CREATE INDEX graph_subscriptions_expiry ON graph_subscriptions (expires_at) WHERE status = 'active';
-- serves: graph_events.due_resubscriptions (the failed ones), latest_subscription_for_visit and the later and
-- failed rows of a visit that due_resubscriptions looks for
CREATE INDEX graph_subscriptions_visit_created ON graph_subscriptions (visit_id, created_at);
CREATE INDEX graph_subscriptions_failed ON graph_subscriptions (created_at) WHERE status = 'failed';
-- serves: graph_events.due_reconciliations
CREATE INDEX graph_subscriptions_reconcile ON graph_subscriptions (reconcile_due) WHERE reconcile_due IS NOT NULL;

-- The durable queue between the webhook (which only checks what is cheap and answers 202) and the worker
-- (which decrypts, verifies and writes presence events). `body` is the notification as Graph sent it, its
-- resource data still encrypted to our key; it is cleared once processed. The row stays a day as the memory of
-- what was received (a notification Graph sends again is one row: `digest`).
CREATE TABLE graph_notifications (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    digest          bytea NOT NULL,
    subscription_id uuid NOT NULL REFERENCES graph_subscriptions (id),
    body            jsonb,
    received_at     timestamptz NOT NULL DEFAULT now(),
    attempts        integer NOT NULL DEFAULT 0,
    not_before      timestamptz NOT NULL DEFAULT now(),
    processed_at    timestamptz,
    outcome         text CHECK (outcome IN ('applied', 'ignored', 'bad_signature', 'undecryptable', 'malformed',
                                            'gave_up'))
);
-- serves: graph_events.enqueue_notifications (ON CONFLICT: the same notification received twice is kept once)
CREATE UNIQUE INDEX graph_notifications_digest ON graph_notifications (digest);
-- serves: graph_events.claim_notifications (the unprocessed ones, oldest first)
CREATE INDEX graph_notifications_pending ON graph_notifications (id) WHERE processed_at IS NULL;
-- serves: graph_events.purge_notifications
CREATE INDEX graph_notifications_processed ON graph_notifications (processed_at) WHERE processed_at IS NOT NULL;

-- Who a Teams identity is in our visit: the clinician (by Entra object id), or a patient or guest matched
-- through our own lobby, or an anonymous guest. The identity is kept only as a keyed digest.
CREATE TABLE teams_participants (
    visit_id       uuid NOT NULL REFERENCES visits (id),
    identity_key   bytea NOT NULL,
    participant_id uuid NOT NULL REFERENCES participants (id),
    PRIMARY KEY (visit_id, identity_key)       -- serves: graph_events.teams_participant, map_teams_participant
);
-- serves: graph_events.unmatched_lobby_participants (who is already matched)
CREATE INDEX teams_participants_participant ON teams_participants (participant_id);
