-- name: insert_configuration
INSERT INTO configurations (fhir_base_url, environment, client_id, client_auth, client_secret, scopes,
                            meeting_provider, writeback_strategy)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
RETURNING id;

-- name: approve_configuration
UPDATE configurations SET status = 'approved', approved_by = $2, approved_at = now()
WHERE id = $1
RETURNING approved_at;

-- name: list_configurations
SELECT id, fhir_base_url, environment, client_id, client_auth, scopes, meeting_provider, status,
       approved_by, approved_at, writeback_strategy, writeback_disabled_reason
FROM configurations ORDER BY id;

-- name: append_audit
-- A row about a configuration belongs to the configuration's organisation unless the caller names one.
INSERT INTO audit_log (actor, action, subject, details, organisation_id)
VALUES ($1, $2, $3, $4::jsonb, COALESCE($5::bigint, CASE WHEN $3 ~ '^configuration:[0-9]{1,18}$' THEN
    (SELECT organisation_id FROM configurations WHERE id = substring($3 FROM 15)::bigint) END));
