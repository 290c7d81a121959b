-- 0020: visits end (by the clinician, after everyone has gone, or after their window), and the customer's
-- systems hear of visit events through signed webhooks. No patient data: ids, reasons, times, URLs the
-- organisation's admin gave, and webhook secrets sealed with the gateway key.

-- The end of the appointment's window, as the join links were issued for it (a time, not patient data).
ALTER TABLE visits ADD COLUMN window_end timestamptz;

-- One row per ended visit: its primary key is what makes the end happen exactly once, whoever ends it.
CREATE TABLE visit_ends (
    visit_id   uuid PRIMARY KEY REFERENCES visits (id),
    event_id   bigint NOT NULL UNIQUE REFERENCES presence_events (id),  -- the `visit_ended` event
    reason     text NOT NULL CHECK (reason IN ('clinician', 'idle', 'window')),
    no_show    boolean NOT NULL,        -- the patient never entered the lobby or the room
    ended_by   uuid REFERENCES participants (id),  -- the clinician, when one ended it
    ended_at   timestamptz NOT NULL
);
-- serves: visit_end.due_visits (visits not ended yet, newest windows first are found by created_at)
CREATE INDEX visits_created ON visits (created_at);

-- Webhook endpoints of an organisation. The secret is ours (whsec_...), sealed; shown once when made.
CREATE TABLE webhook_endpoints (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    organisation_id  bigint NOT NULL REFERENCES organisations (id),
    url              text NOT NULL,
    event_types      text[] NOT NULL,
    secret           bytea NOT NULL,    -- sealed (context webhook_endpoints.secret)
    created_at       timestamptz NOT NULL DEFAULT now(),
    removed_at       timestamptz,
    -- Set when deliveries failed for the whole retry window: nothing is sent until an admin turns it on again.
    disabled_reason  text,
    disabled_at      timestamptz
);
-- serves: webhooks.endpoints_for_event, webhooks.list_endpoints
CREATE INDEX webhook_endpoints_organisation ON webhook_endpoints (organisation_id) WHERE removed_at IS NULL;

-- One message to one endpoint. The payload holds identifiers and times only (see presence.webhooks).
CREATE TABLE webhook_outbox (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    endpoint_id   bigint NOT NULL REFERENCES webhook_endpoints (id),
    message_id    text NOT NULL,        -- webhook-id: the same on every attempt of this message
    event_type    text NOT NULL,
    payload       text NOT NULL,
    state         text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts      integer NOT NULL DEFAULT 0,
    available_at  timestamptz NOT NULL DEFAULT now(),
    created_at    timestamptz NOT NULL DEFAULT now(),
    finished_at   timestamptz,
    UNIQUE (endpoint_id, message_id)
);
-- serves: webhooks.claim_messages (due pending messages, oldest first)
CREATE INDEX webhook_outbox_due ON webhook_outbox (available_at) WHERE state = 'pending';

-- Every delivery attempt: when, the answer's status code (NULL: no answer), how long. Never a body.
CREATE TABLE webhook_attempts (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    message_id   bigint NOT NULL REFERENCES webhook_outbox (id),
    endpoint_id  bigint NOT NULL REFERENCES webhook_endpoints (id),
    at           timestamptz NOT NULL DEFAULT now(),
    status_code  integer,
    error        text,                  -- a short code (timeout, refused_address, ...), never a body
    duration_ms  integer NOT NULL
);
-- serves: webhooks.delivery_log
CREATE INDEX webhook_attempts_endpoint ON webhook_attempts (endpoint_id, id);

-- How far the webhook follower has read the presence event log (one row).
-- A gap in the ids (a transaction still writing, or one rolled back) is passed only once every transaction
-- running when it was seen has ended: gap_snapshot is pg_current_snapshot() then, gap_upto the newest id seen.
CREATE TABLE webhook_follower (
    id            boolean PRIMARY KEY DEFAULT true CHECK (id),
    last_id       bigint NOT NULL,
    gap_snapshot  text,
    gap_upto      bigint
);
INSERT INTO webhook_follower (id, last_id) SELECT true, coalesce(max(id), 0) FROM presence_events;
