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

-- name: csv_time_zone
-- The zone the CSV's times are written in, for this transaction only.
SELECT set_config('TimeZone', $1, true);

-- name: usage_csv_lines
-- One CSV line per visit, oldest first, read through a cursor (the export). Formatted here rather than row by
-- row in Python, which took 5x the time of reading the rows at 1,000,000 visits. Times in the transaction's
-- zone (csv_time_zone) with their offset; the department (the only text from outside) always quoted, and
-- given a leading ' when a spreadsheet would run it as a formula (as config_portal.audit.safe_cell does).
SELECT concat_ws(',', visit_id,
                 to_char(opened_at, 'YYYY-MM-DD"T"HH24:MI:SSTZH:TZM'),
                 coalesce(to_char(started_at, 'YYYY-MM-DD"T"HH24:MI:SSTZH:TZM'), ''),
                 coalesce(to_char(ended_at, 'YYYY-MM-DD"T"HH24:MI:SSTZH:TZM'), ''),
                 coalesce(round(duration_s)::bigint::text, ''),
                 coalesce(round(lobby_wait_s)::bigint::text, ''),
                 status, attendees,
                 CASE WHEN department IS NULL THEN ''
                      ELSE '"' || replace(CASE WHEN left(department, 1) IN ('=', '+', '-', '@', chr(9), chr(13))
                                               THEN '''' || department ELSE department END, '"', '""') || '"' END,
                 environment, meeting_provider, sms_sent, email_sent) || chr(13) || chr(10) AS line
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

