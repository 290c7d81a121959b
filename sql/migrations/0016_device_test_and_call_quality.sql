-- 0016: what a device test found, and a per-visit summary of call quality. No patient data: booleans, small
-- vocabularies and buckets, keyed by the visit and the participant's role, never by who the participant is.

-- A device test's result travels on its event (device_test_passed / device_test_failed): camera, microphone
-- and speaker booleans, the ICE candidate types that gathered, whether a TURN relay was reachable, and the
-- round-trip time as a bucket. Built by the gateway from a checked frame (presence.ws), never text a page typed.
ALTER TABLE presence_events ADD COLUMN detail jsonb
    CHECK (detail IS NULL OR (kind IN ('device_test_passed', 'device_test_failed')
                              AND jsonb_typeof(detail) = 'object' AND octet_length(detail::text) <= 512));

-- Call quality, one row per visit and participant role, updated as samples arrive (about one every 30 s per
-- room page): counts per round-trip-time bucket and per packet-loss bucket, from which the reports read the
-- worst and the median. Bounded: three roles per visit, and a row stops counting at a cap of samples.
CREATE TABLE call_quality (
    visit_id    uuid NOT NULL REFERENCES visits (id),
    role        text NOT NULL CHECK (role IN ('provider', 'patient', 'guest')),
    samples     integer NOT NULL DEFAULT 0 CHECK (samples >= 0),
    -- buckets: under 50 ms, 50-100, 100-200, 200-400, 400 ms and over
    rtt_counts  integer[] NOT NULL DEFAULT '{0,0,0,0,0}' CHECK (cardinality(rtt_counts) = 5),
    -- buckets: under 1 %, 1-3 %, 3-10 %, 10 % and over
    loss_counts integer[] NOT NULL DEFAULT '{0,0,0,0}' CHECK (cardinality(loss_counts) = 4),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    -- serves: quality.add_quality_sample (the upsert), quality.visit_quality
    PRIMARY KEY (visit_id, role)
);
