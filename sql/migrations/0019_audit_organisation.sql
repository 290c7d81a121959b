-- 0019: every audit row the portal writes names its organisation, so that an organisation's admins read
-- their own organisation's trail and nobody else's. Rows written before this have NULL: the portal shows
-- them to nobody (operators read them in SQL). Adding a column changes no row, so the append-only
-- triggers of 0001 stay as they are.
ALTER TABLE audit_log ADD COLUMN organisation_id bigint REFERENCES organisations (id);

-- serves: audit.page (one organisation's rows, newest first, keyset by id); the filters narrow within it
CREATE INDEX audit_log_organisation_id ON audit_log (organisation_id, id) WHERE organisation_id IS NOT NULL;
