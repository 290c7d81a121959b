-- 0004: write-back of presence events to the FHIR Encounter through a transactional outbox.
-- The outbox holds one row per event of a visit whose configuration writes back; the row is inserted in
-- the same transaction as the event (events.append_event). Rows carry no patient data: ids, states,
-- times, and reasons made of status codes and OperationOutcome issue codes only.

ALTER TABLE configurations
    ADD COLUMN writeback_strategy text NOT NULL DEFAULT 'none'
        CHECK (writeback_strategy IN ('fhir-r4-put', 'fhir-r4-patch', 'none')),
    -- Backend Services scopes asked for with client_credentials.
    ADD COLUMN writeback_scopes text NOT NULL DEFAULT 'system/Encounter.read system/Encounter.write',
    -- Set when write-back cannot run (scope not granted, client cannot use client_credentials, ...);
    -- the worker skips the configuration until it is cleared.
    ADD COLUMN writeback_disabled_reason text,
    ADD COLUMN writeback_disabled_at timestamptz;

-- One row per event to write back. A visit is worked on through its oldest pending row (its "head"):
-- claiming the head leases the whole visit, so one worker at a time applies a visit's events, in order.
-- 'dead' is the dead-letter state: the reason says why, and nothing retries it.
CREATE TABLE writeback_outbox (
    event_id         bigint PRIMARY KEY REFERENCES presence_events (id),
    visit_id         uuid NOT NULL REFERENCES visits (id),
    configuration_id bigint NOT NULL REFERENCES configurations (id),
    state            text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'done', 'dead')),
    attempts         integer NOT NULL DEFAULT 0,
    -- Not claimable before this time: a retry's backoff, or the lease of the worker holding it.
    available_at     timestamptz NOT NULL DEFAULT now(),
    claimed_by       uuid,
    reason           text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz
);
-- serves: writeback.claim_visits (oldest pending rows of one configuration), writeback.backlog
CREATE INDEX writeback_outbox_pending ON writeback_outbox (configuration_id, event_id) WHERE state = 'pending';
-- serves: writeback.claim_visits (is there an older pending row of the same visit?), writeback.finish_visit,
-- writeback.dead_letter_visit
CREATE INDEX writeback_outbox_visit_pending ON writeback_outbox (visit_id, event_id) WHERE state = 'pending';
-- serves: writeback.dead_letters (newest first)
CREATE INDEX writeback_outbox_dead ON writeback_outbox (finished_at DESC) WHERE state = 'dead';

-- Append-only audit of every write-back attempt: what (visit, events up to, strategy), when, outcome, reason.
CREATE TABLE writeback_attempts (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at               timestamptz NOT NULL DEFAULT now(),
    visit_id         uuid NOT NULL REFERENCES visits (id),
    configuration_id bigint NOT NULL REFERENCES configurations (id),
    up_to_event_id   bigint NOT NULL,
    strategy         text NOT NULL,
    outcome          text NOT NULL CHECK (outcome IN ('written', 'unchanged', 'retry', 'dead', 'disabled')),
    http_status      integer,
    reason           text,
    version_id       text,              -- the Encounter version we wrote, if any
    duration_ms      integer NOT NULL
);
-- serves: writeback.attempts_of_visit
CREATE INDEX writeback_attempts_visit ON writeback_attempts (visit_id, id);

CREATE TRIGGER writeback_attempts_append_only BEFORE UPDATE OR DELETE ON writeback_attempts
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER writeback_attempts_no_truncate BEFORE TRUNCATE ON writeback_attempts
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();
