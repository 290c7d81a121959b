-- 0005: launch states live only between the redirect to the EHR and its callback (minutes at most), so
-- they need neither the write-ahead log nor a foreign key.
-- Unlogged, their inserts and deletes write no WAL and a launch no longer waits twice for a disk flush
-- (~0.4 ms a statement on this machine's disk). After a database crash the table is empty: a clinician in
-- the middle of a launch starts it again from the EHR, and no state can be replayed. The table is not
-- copied to standbys, with the same outcome after a failover.
-- The foreign key made every launch take a logged KEY SHARE lock on its configuration's row (one row
-- shared by every concurrent launch); the state is read back joined to configurations, so a state whose
-- configuration is gone is simply unknown.
ALTER TABLE launch_states DROP CONSTRAINT launch_states_configuration_id_fkey;
ALTER TABLE launch_states SET UNLOGGED;
