-- 0022: the error report (issue 16 line 3): launch failures, near misses of an unknown `iss`, and write-back
-- failures, counted per configuration, reason and day (UTC) as they happen. Counts, codes and EHR URLs only:
-- no launch parameter, no token, nothing about who launched or whose Encounter it was.

-- launch_refusals now counts every launch failure of a configuration (refused at /launch or failed at the
-- callback), not only refusals before any outbound request. Each counter is split in buckets (the database
-- backend's pid modulo 64): connections counting at the same moment update different rows, so a flood of
-- failing launches does not queue on one hot row. The report adds the buckets up.
ALTER TABLE launch_refusals ADD COLUMN bucket smallint NOT NULL DEFAULT 0 CHECK (bucket BETWEEN 0 AND 63);
DROP INDEX launch_refusals_key;
-- serves: launch.count_launch_refusal (the upsert's conflict target; unknown `iss` meet on 0) and
-- error_report.launch_failures (an organisation's configurations over a range of days)
CREATE UNIQUE INDEX launch_refusals_key ON launch_refusals ((coalesce(configuration_id, 0)), day, reason, bucket);

-- An unknown `iss` that nearly matches an approved configuration (a suffix, a path or the environment apart),
-- kept as shown to admins: scheme, host and path only, personal-looking segments masked (gateway.near_miss),
-- at most 300 characters, and at most launch.NEAR_MISSES_PER_DAY distinct URLs per configuration and day.
CREATE TABLE launch_near_misses (
    configuration_id bigint NOT NULL REFERENCES configurations (id),
    day              date NOT NULL,
    iss              text NOT NULL CHECK (length(iss) <= 300),
    difference       text NOT NULL CHECK (difference IN ('suffix', 'path', 'environment')),
    -- serves: launch.note_near_miss (insert once; the per-day cap counts by the key's first two columns) and
    -- error_report.near_misses
    PRIMARY KEY (configuration_id, day, iss)
);

-- Write-back attempts that failed (retried, gave up, turned write-back off), by the reason's first word,
-- counted in the same statement that appends the attempt to writeback_attempts; bucketed as above.
CREATE TABLE writeback_failures (
    configuration_id bigint NOT NULL REFERENCES configurations (id),
    day              date NOT NULL,
    reason           text NOT NULL CHECK (length(reason) <= 60),
    outcome          text NOT NULL CHECK (outcome IN ('retry', 'dead', 'disabled')),
    bucket           smallint NOT NULL CHECK (bucket BETWEEN 0 AND 63),
    count            bigint NOT NULL DEFAULT 0
);
-- serves: writeback.record_attempt (the upsert's conflict target) and error_report.writeback_failures
CREATE UNIQUE INDEX writeback_failures_key ON writeback_failures (configuration_id, day, reason, outcome, bucket);
