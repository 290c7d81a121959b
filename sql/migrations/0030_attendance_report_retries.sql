-- 0030: the attendance report of a Teams meeting is read again, a bounded number of times with a growing wait,
-- while Graph has not produced it yet (404, or no report or record). The count of such reads is kept on the
-- subscription so that the bound holds across processes and restarts. No patient data: a number.
ALTER TABLE graph_subscriptions ADD COLUMN reconcile_attempts integer NOT NULL DEFAULT 0;
