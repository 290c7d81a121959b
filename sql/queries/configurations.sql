-- name: insert_configuration
-- A new configuration: pending until its first revision is approved (its values are not in force before).
INSERT INTO configurations (fhir_base_url, environment, client_id, client_auth, client_secret, scopes,
                            meeting_provider, writeback_strategy, ehr, approver, organisation_id, status)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, 'pending')
RETURNING id;

-- name: set_proposed_values
-- A configuration never approved shows its latest proposal (its values are not in force: status is not
-- 'approved', so launches refuse it).
UPDATE configurations SET fhir_base_url = $2, environment = $3, client_id = $4, client_auth = $5,
       client_secret = $6, scopes = $7, meeting_provider = $8, writeback_strategy = $9, ehr = $10,
       approver = $11, status = 'pending'
WHERE id = $1 AND status IN ('pending', 'rejected');

-- name: supersede_pending
UPDATE configuration_revisions SET state = 'superseded'
WHERE configuration_id = $1 AND state = 'pending'
RETURNING number;

-- name: insert_revision
INSERT INTO configuration_revisions (configuration_id, number, fhir_base_url, environment, ehr, client_id,
                                     client_auth, client_secret, scopes, meeting_provider, writeback_strategy,
                                     approver, proposed_by)
SELECT $1, coalesce(max(number), 0) + 1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12
FROM configuration_revisions WHERE configuration_id = $1
RETURNING id, number;

-- name: configuration_by_id
SELECT id, organisation_id, fhir_base_url, environment, ehr, client_id, client_auth, client_secret, scopes,
       meeting_provider, writeback_strategy, approver, status, approved_by, approved_at, retired_by, retired_at,
       writeback_disabled_reason
FROM configurations WHERE id = $1;

-- name: configuration_by_base
SELECT id, organisation_id, status FROM configurations WHERE fhir_base_url = $1;

-- name: organisation_configurations
SELECT c.id, c.fhir_base_url, c.environment, c.ehr, c.client_id, c.status, c.approver,
       r.id AS pending_revision, r.number AS pending_number, r.approver AS pending_approver
FROM configurations c
LEFT JOIN configuration_revisions r ON r.configuration_id = c.id AND r.state = 'pending'
WHERE c.organisation_id = $1
ORDER BY c.id;

-- name: list_configurations
SELECT c.id, o.slug AS organisation, c.fhir_base_url, c.environment, c.ehr, c.client_id, c.client_auth,
       c.scopes, c.meeting_provider, c.status, c.approved_by, c.approved_at, c.writeback_strategy,
       c.writeback_disabled_reason
FROM configurations c LEFT JOIN organisations o ON o.id = c.organisation_id
ORDER BY c.id;

-- name: revision_by_id
SELECT r.id, r.configuration_id, r.number, r.fhir_base_url, r.environment, r.ehr, r.client_id, r.client_auth,
       r.client_secret, r.scopes, r.meeting_provider, r.writeback_strategy, r.approver, r.state, r.proposed_by,
       r.proposed_at, r.decided_by, r.decided_at, r.decision_reason, r.ehr_fhir_user, r.ehr_signed_in_at,
       extract(epoch FROM now() - r.ehr_signed_in_at)::float8 AS ehr_sign_in_age
FROM configuration_revisions r WHERE r.id = $1;

-- name: revisions_of
SELECT id, configuration_id, number, fhir_base_url, environment, ehr, client_id, client_auth, client_secret,
       scopes, meeting_provider, writeback_strategy, approver, state, proposed_by, proposed_at, decided_by,
       decided_at, decision_reason, ehr_fhir_user, ehr_signed_in_at, NULL::float8 AS ehr_sign_in_age
FROM configuration_revisions WHERE configuration_id = $1 ORDER BY number;

-- name: record_ehr_sign_in
-- The proof of an approver's EHR sign-in: who (the fhirUser reference) and when, nothing else.
UPDATE configuration_revisions SET ehr_fhir_user = $2, ehr_signed_in_at = now()
WHERE id = $1 AND state = 'pending';

-- name: decide_revision
UPDATE configuration_revisions SET state = $2, decided_by = $3, decided_at = now(), decision_reason = $4
WHERE id = $1 AND state = 'pending'
RETURNING decided_at;

-- name: apply_revision
-- The approved revision's values come into force.
UPDATE configurations c SET fhir_base_url = r.fhir_base_url, environment = r.environment, ehr = r.ehr,
       client_id = r.client_id, client_auth = r.client_auth, client_secret = r.client_secret, scopes = r.scopes,
       meeting_provider = r.meeting_provider, writeback_strategy = r.writeback_strategy, approver = r.approver,
       status = 'approved', approved_by = $2, approved_at = now()
FROM configuration_revisions r
WHERE r.id = $1 AND c.id = r.configuration_id
RETURNING c.id;

-- name: reject_new_configuration
UPDATE configurations SET status = 'rejected' WHERE id = $1 AND status = 'pending';

-- name: retire_configuration
UPDATE configurations SET status = 'retired', retired_by = $2, retired_at = now()
WHERE id = $1 AND status <> 'retired'
RETURNING retired_at;

-- name: organisation_for_configurations
SELECT id, waive_oracle_approval FROM organisations WHERE slug = $1;

-- name: organisation_waives_oracle
SELECT waive_oracle_approval FROM organisations WHERE id = $1;

-- name: set_waive_oracle_approval
UPDATE organisations SET waive_oracle_approval = $2 WHERE id = $1;

-- name: approvers_of
-- Who may be named to approve: the organisation's approvers granted by subject (a configuration names one
-- person; a group or an email is not a person the EHR sign-in can be checked against).
SELECT value AS subject FROM memberships
WHERE organisation_id = $1 AND role = 'approver' AND matched_by = 'subject'
ORDER BY value;

-- name: append_audit
-- A row about a configuration belongs to the configuration's organisation unless the caller names one.
INSERT INTO audit_log (actor, action, subject, details, organisation_id)
VALUES ($1, $2, $3, $4::jsonb, COALESCE($5::bigint, CASE WHEN $3 ~ '^configuration:[0-9]{1,18}$' THEN
    (SELECT organisation_id FROM configurations WHERE id = substring($3 FROM 15)::bigint) END));

-- name: lock_signing_key_note
-- Processes starting together note the key once: the second waits here, then sees the first one's row.
SELECT pg_advisory_xact_lock(7652381490);

-- name: last_signing_key
SELECT details -> 'after' ->> 'kid' FROM audit_log WHERE action = 'key.rotate' ORDER BY id DESC LIMIT 1;

-- name: organisation_time_zone
-- An organisation's own time zone (NULL: the gateway's), for its reports, queues and messages.
SELECT time_zone FROM organisations WHERE id = $1;

-- name: zone_known
-- Whether the database knows a time zone name: the error report's counters turn now() into the organisation's
-- day in the statement, and a name only Python's tz data has would make every count of it fail. Read on an
-- admin's change only (the view lists the server's zone files).
SELECT EXISTS (SELECT 1 FROM pg_timezone_names WHERE name = $1);

-- name: set_organisation_time_zone
UPDATE organisations SET time_zone = $2 WHERE id = $1 RETURNING id;
