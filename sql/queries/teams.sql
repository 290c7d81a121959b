-- Microsoft Teams meetings (gateway/teams.py): an organisation's Entra application, clinicians' links,
-- the pop-up sign-in's state, and the meeting on the visit.

-- name: tenant_of_organisation
SELECT organisation_id, tenant_id, client_id, credential_kind, credential, thumbprint, checked_at, updated_by,
       updated_at, last_problem, last_problem_at
FROM teams_tenants WHERE organisation_id = $1;

-- name: organizer_for
-- A Teams launch: the organisation's application and the clinician's link, if any ($2: the EHR user's lookup).
SELECT t.organisation_id, t.tenant_id, t.client_id, t.credential_kind, t.credential, t.thumbprint,
       l.entra_oid
FROM configurations c
JOIN teams_tenants t ON t.organisation_id = c.organisation_id
-- A link made in another tenant (the settings changed since) does not count: the clinician signs in again.
LEFT JOIN teams_links l ON l.organisation_id = c.organisation_id AND l.ehr_user_key = $2
                       AND l.entra_tenant_id = t.tenant_id
WHERE c.id = $1;

-- name: save_tenant
INSERT INTO teams_tenants (organisation_id, tenant_id, client_id, credential_kind, credential, thumbprint,
                           checked_at, updated_by)
VALUES ($1, $2, $3, $4, $5, $6, now(), $7)
ON CONFLICT (organisation_id) DO UPDATE
SET tenant_id = EXCLUDED.tenant_id, client_id = EXCLUDED.client_id, credential_kind = EXCLUDED.credential_kind,
    credential = EXCLUDED.credential, thumbprint = EXCLUDED.thumbprint, checked_at = now(),
    updated_by = EXCLUDED.updated_by, updated_at = now(), last_problem = NULL, last_problem_at = NULL;

-- name: note_problem
UPDATE teams_tenants SET last_problem = $2, last_problem_at = now() WHERE organisation_id = $1;

-- name: save_link
INSERT INTO teams_links (organisation_id, ehr_user_key, ehr_user_ref, entra_oid, entra_tenant_id)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (organisation_id, ehr_user_key) DO UPDATE
SET ehr_user_ref = EXCLUDED.ehr_user_ref, entra_oid = EXCLUDED.entra_oid,
    entra_tenant_id = EXCLUDED.entra_tenant_id, linked_at = now()
RETURNING id;

-- name: links_of
SELECT id, ehr_user_ref, entra_oid, entra_tenant_id, linked_at
FROM teams_links WHERE organisation_id = $1 ORDER BY linked_at DESC, id DESC;

-- name: linked_oids
SELECT entra_oid FROM teams_links WHERE organisation_id = $1 ORDER BY linked_at DESC LIMIT $2;

-- name: delete_link
DELETE FROM teams_links WHERE organisation_id = $1 AND id = $2
RETURNING ehr_user_ref, entra_oid, entra_tenant_id;

-- name: insert_sign_in
INSERT INTO teams_sign_ins (state_hash, organisation_id, visit_id, ehr_user_ref, flow, expires_at)
VALUES ($1, $2, $3, $4, $5, now() + $6 * interval '1 second');

-- name: take_sign_in
DELETE FROM teams_sign_ins WHERE state_hash = $1
RETURNING organisation_id, visit_id, ehr_user_ref, flow, expires_at > now() AS live;

-- name: provider_session_lives
-- The sign-in's clinician still has a live session in the visit it started from.
SELECT EXISTS (SELECT 1 FROM provider_sessions WHERE visit_id = $1 AND fhir_user = $2 AND expires_at > now());

-- name: purge_sign_ins
DELETE FROM teams_sign_ins WHERE expires_at <= now();

-- name: set_teams_meeting
-- The first launch to get here names the meeting and its join address; later ones read the winner's.
-- named_now: this call named it (the row is locked by the UPDATE, so exactly one call sees true). A call that
-- waited on another's lock may read NULL from its statement's snapshot; it reads the row again (teams.py).
WITH named AS (
    UPDATE visits
    SET meeting_join_ref = $3, meeting_id = $2
    WHERE id = $1 AND meeting_id IS NULL
    RETURNING meeting_id, meeting_join_ref
)
SELECT meeting_id, meeting_join_ref, true AS named_now FROM named
UNION ALL
SELECT meeting_id, meeting_join_ref, false FROM visits WHERE id = $1 AND NOT EXISTS (SELECT 1 FROM named);

-- name: meeting_of_visit
SELECT v.meeting_provider, v.meeting_id, v.meeting_join_ref, v.configuration_id, c.organisation_id
FROM visits v JOIN configurations c ON c.id = v.configuration_id
WHERE v.id = $1;
