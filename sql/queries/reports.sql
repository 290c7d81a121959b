-- The usage report: aggregates of the per-visit rows presence.usage keeps (visit_usage), never the event log.
-- $1 the organisation, [$2, $3) the range (midnights in its time zone); for days, $4 its time zone (IANA name).
-- Percentiles are continuous (interpolated), of the visits that have the figure; the no-show rate is the
-- report's, from these counts.

-- name: usage_totals
SELECT count(*) AS visits,
       count(*) FILTER (WHERE status = 'completed') AS completed,
       count(*) FILTER (WHERE status = 'no_show') AS no_shows,
       count(*) FILTER (WHERE status = 'cancelled') AS cancelled,
       percentile_cont(ARRAY[0.5, 0.9]) WITHIN GROUP (ORDER BY lobby_wait_s) AS lobby_wait,
       percentile_cont(ARRAY[0.5, 0.9]) WITHIN GROUP (ORDER BY duration_s) AS duration,
       max(attendees) AS attendees, sum(sms_sent) AS sms, sum(email_sent) AS email
FROM visit_usage
WHERE organisation_id = $1 AND opened_at >= $2 AND opened_at < $3;

-- name: usage_by_day
SELECT (opened_at AT TIME ZONE $4)::date AS key,
       count(*) AS visits,
       count(*) FILTER (WHERE status = 'completed') AS completed,
       count(*) FILTER (WHERE status = 'no_show') AS no_shows,
       count(*) FILTER (WHERE status = 'cancelled') AS cancelled,
       percentile_cont(ARRAY[0.5, 0.9]) WITHIN GROUP (ORDER BY lobby_wait_s) AS lobby_wait,
       percentile_cont(ARRAY[0.5, 0.9]) WITHIN GROUP (ORDER BY duration_s) AS duration,
       max(attendees) AS attendees, sum(sms_sent) AS sms, sum(email_sent) AS email
FROM visit_usage
WHERE organisation_id = $1 AND opened_at >= $2 AND opened_at < $3
GROUP BY 1 ORDER BY 1;

-- name: usage_by_department
SELECT department AS key,
       count(*) AS visits,
       count(*) FILTER (WHERE status = 'completed') AS completed,
       count(*) FILTER (WHERE status = 'no_show') AS no_shows,
       count(*) FILTER (WHERE status = 'cancelled') AS cancelled,
       percentile_cont(ARRAY[0.5, 0.9]) WITHIN GROUP (ORDER BY lobby_wait_s) AS lobby_wait,
       percentile_cont(ARRAY[0.5, 0.9]) WITHIN GROUP (ORDER BY duration_s) AS duration,
       max(attendees) AS attendees, sum(sms_sent) AS sms, sum(email_sent) AS email
FROM visit_usage
WHERE organisation_id = $1 AND opened_at >= $2 AND opened_at < $3
GROUP BY 1 ORDER BY 1 NULLS LAST;

-- name: usage_by_environment
SELECT environment AS key,
       count(*) AS visits,
       count(*) FILTER (WHERE status = 'completed') AS completed,
       count(*) FILTER (WHERE status = 'no_show') AS no_shows,
       count(*) FILTER (WHERE status = 'cancelled') AS cancelled,
       percentile_cont(ARRAY[0.5, 0.9]) WITHIN GROUP (ORDER BY lobby_wait_s) AS lobby_wait,
       percentile_cont(ARRAY[0.5, 0.9]) WITHIN GROUP (ORDER BY duration_s) AS duration,
       max(attendees) AS attendees, sum(sms_sent) AS sms, sum(email_sent) AS email
FROM visit_usage
WHERE organisation_id = $1 AND opened_at >= $2 AND opened_at < $3
GROUP BY 1 ORDER BY 1;

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

