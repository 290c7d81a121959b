-- The portal's error report: an organisation's launch failures, near misses and write-back failures per
-- configuration, reason and day (the organisation's days: each counter counts on today in the configuration's
-- organisation's time zone), from the counters kept as failures happen (buckets added up here).

-- name: organisation_configurations
SELECT id, fhir_base_url, environment, ehr, status FROM configurations WHERE organisation_id = $1 ORDER BY id;

-- name: launch_failures
-- Days $2 to $3 of the organisation's configurations; the join is on the counter index's own expression.
SELECT r.day, c.id AS configuration_id, r.reason, sum(r.count)::bigint AS count
FROM configurations c
JOIN launch_refusals r ON coalesce(r.configuration_id, 0) = c.id
WHERE c.organisation_id = $1 AND r.day BETWEEN $2 AND $3
GROUP BY r.day, c.id, r.reason
ORDER BY r.day DESC, c.id, count DESC, r.reason;

-- name: writeback_failures
SELECT f.day, f.configuration_id, f.reason,
       coalesce(sum(f.count) FILTER (WHERE f.outcome = 'retry'), 0)::bigint AS retried,
       coalesce(sum(f.count) FILTER (WHERE f.outcome = 'dead'), 0)::bigint AS gave_up,
       coalesce(sum(f.count) FILTER (WHERE f.outcome = 'disabled'), 0)::bigint AS turned_off
FROM configurations c
JOIN writeback_failures f ON f.configuration_id = c.id
WHERE c.organisation_id = $1 AND f.day BETWEEN $2 AND $3
GROUP BY f.day, f.configuration_id, f.reason
ORDER BY f.day DESC, f.configuration_id, f.reason;

-- name: near_misses
SELECT n.configuration_id, n.iss, n.difference, min(n.day) AS first_day, max(n.day) AS last_day,
       count(*)::int AS days
FROM configurations c
JOIN launch_near_misses n ON n.configuration_id = c.id
WHERE c.organisation_id = $1 AND n.day BETWEEN $2 AND $3
GROUP BY n.configuration_id, n.iss, n.difference
ORDER BY n.configuration_id, max(n.day) DESC, n.iss
LIMIT 500;
