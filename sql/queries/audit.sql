-- The portal's view of the audit trail: one organisation's rows, newest first, keyset by id.
-- Every filter is optional (NULL: any). Rows without an organisation (before 0019, operators' own) never match,
-- except the gateway's signing-key rotations, which concern every organisation's EHR build.

-- name: page
-- serves: the audit page and the CSV export (batches); index audit_log_organisation_id
SELECT id, at, actor, action, subject, details
FROM audit_log
WHERE (organisation_id = $1 OR (organisation_id IS NULL AND action = 'key.rotate'))
  AND ($2::bigint IS NULL OR id < $2)
  AND ($3::text IS NULL OR action = $3)
  AND ($4::text IS NULL OR actor = $4)
  AND ($5::timestamptz IS NULL OR at >= $5)
  AND ($6::timestamptz IS NULL OR at < $6)
  AND ($7::text IS NULL OR subject = $7)
ORDER BY id DESC
LIMIT $8;

-- name: actions_of
SELECT DISTINCT action FROM audit_log
WHERE organisation_id = $1 OR (organisation_id IS NULL AND action = 'key.rotate') ORDER BY action;
