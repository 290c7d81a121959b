-- 0007: a gateway process that dies (kill -9, out of memory, its host lost) does not leave its sockets'
-- participants "connected" forever. Each process holds a lease on a row here and renews it; the events that
-- open and close a socket (lobby_entered/left, connected/disconnected) name the process that holds it. Once a
-- lease lapses, any live process writes the missing closing events (as many as that process opened and
-- never closed) and drops the row; a process that finds its own row gone has been written off, closes its
-- sockets and takes a new lease. No patient data: a process is a random id and two times.
CREATE TABLE presence_processes (
    id          uuid PRIMARY KEY,
    started_at  timestamptz NOT NULL DEFAULT now(),
    renewed_at  timestamptz NOT NULL DEFAULT now()
);

ALTER TABLE presence_events ADD COLUMN process_id uuid;
-- serves: events.close_orphans (the sweep of a lapsed process; only socket events carry a process)
CREATE INDEX presence_events_process ON presence_events (process_id) WHERE process_id IS NOT NULL;
