-- 0024: the usage report's figures, kept as presence events arrive (presence.usage), so the report reads one
-- narrow row per visit and never the event log. No patient data: opaque ids, times, counts, the department's
-- identifier from the launch context, the configuration's environment and meeting provider.

CREATE TABLE visit_usage (
    visit_id           uuid PRIMARY KEY REFERENCES visits (id),
    organisation_id    bigint REFERENCES organisations (id),  -- NULL: an operator's configuration, no portal
    opened_at          timestamptz NOT NULL,  -- when the visit was made (its first launch): the day it counts on
    environment        text NOT NULL,
    meeting_provider   text NOT NULL,
    department         text,
    status             text NOT NULL DEFAULT 'open'
                       CHECK (status IN ('open', 'completed', 'no_show', 'cancelled')),
    started_at         timestamptz,  -- a clinician and a patient or guest both connected, the first time
    provider_first_at  timestamptz,  -- a clinician's first connection
    others_first_at    timestamptz,  -- a patient's or guest's first connection
    last_left_at       timestamptz,  -- the newest disconnection from the visit
    lobby_first_at     timestamptz,  -- a patient's or guest's first lobby entry
    admitted_at        timestamptz,  -- the first admission of a patient or guest
    ended_at           timestamptz,
    -- Worked out from the times above as they change, so the report's aggregate reads plain numbers.
    duration_s         real,         -- started_at to last_left_at
    lobby_wait_s       real,         -- lobby_first_at to admitted_at
    attendees          integer NOT NULL DEFAULT 0,  -- most participants connected at once
    -- Open visit sockets per participant while the visit lasts ({participant id: count}); NULL once it ended
    -- and everyone left.
    present            jsonb,
    sms_sent           integer NOT NULL DEFAULT 0,  -- invitations whose last send went by SMS
    email_sent         integer NOT NULL DEFAULT 0,  -- ... by email
    last_event_id      bigint NOT NULL DEFAULT 0    -- the newest event counted in this row
);
-- serves: reports.usage_by_day, reports.usage_by_department, reports.usage_by_environment, reports.usage_totals,
-- reports.usage_rows (one organisation's visits opened in a range)
CREATE INDEX visit_usage_report ON visit_usage (organisation_id, opened_at);

-- How far the usage follower has read the presence event log (one row); the gap fields as webhook_follower's.
CREATE TABLE usage_follower (
    id            boolean PRIMARY KEY DEFAULT true CHECK (id),
    last_id       bigint NOT NULL,
    gap_snapshot  text,
    gap_upto      bigint
);
-- Starts at the beginning: visits that had events before this migration are counted too.
INSERT INTO usage_follower (id, last_id) VALUES (true, 0);
