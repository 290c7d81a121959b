-- 0011: a socket's opening or closing event that could not be written while PostgreSQL was away is kept in the
-- gateway process's memory and written once the database is back, dated when it happened. Each such event
-- carries a key the gateway chose when it happened, so a retry after a commit whose answer was lost (the
-- connection dropped mid-commit) writes nothing the second time. No patient data: a random id.
ALTER TABLE presence_events ADD COLUMN idempotency_key uuid;
-- serves: events.append_event (ON CONFLICT: the same event written again is not written twice)
CREATE UNIQUE INDEX presence_events_idempotency ON presence_events (idempotency_key)
    WHERE idempotency_key IS NOT NULL;
