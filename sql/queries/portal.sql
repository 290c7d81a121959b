-- name: insert_organisation
INSERT INTO organisations (slug, name, idp_kind, issuer, tenant_id, client_id, client_secret, group_claim)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
RETURNING id;

-- name: organisation_by_slug
SELECT id, slug, name, idp_kind, issuer, tenant_id, client_id, client_secret, group_claim
FROM organisations WHERE slug = $1;

-- name: organisation_by_id
SELECT id, slug, name, idp_kind, issuer, tenant_id, client_id, client_secret, group_claim
FROM organisations WHERE id = $1;

-- name: insert_membership
INSERT INTO memberships (organisation_id, role, matched_by, value, granted_by)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (organisation_id, matched_by, value, role) DO NOTHING
RETURNING id;

-- name: memberships_of
SELECT role, matched_by, value FROM memberships WHERE organisation_id = $1;

-- name: insert_login_state
INSERT INTO portal_login_states (state_hash, organisation_id, browser_hash, flow, max_age, return_to, expires_at)
VALUES ($1, $2, $3, $4, $5, $6, now() + $7 * interval '1 second');

-- name: take_login_state
DELETE FROM portal_login_states s
USING organisations o
WHERE s.state_hash = $1 AND o.id = s.organisation_id
RETURNING s.organisation_id, s.browser_hash, s.flow, s.max_age, s.return_to, s.expires_at > now() AS live;

-- name: purge_login_states
DELETE FROM portal_login_states WHERE expires_at <= now();

-- name: insert_session
INSERT INTO portal_sessions (session_hash, organisation_id, subject, roles, auth_time)
VALUES ($1, $2, $3, $4, to_timestamp($5));

-- name: touch_session
-- A session is live while it has been used within the idle timeout and is younger than its absolute lifetime.
UPDATE portal_sessions s SET last_seen_at = now()
FROM organisations o
WHERE s.session_hash = $1 AND o.id = s.organisation_id
  AND s.last_seen_at > now() - $2 * interval '1 second'
  AND s.created_at > now() - $3 * interval '1 second'
RETURNING s.organisation_id, o.slug, o.name, s.subject, s.roles,
          extract(epoch FROM s.auth_time)::float8 AS auth_time,
          extract(epoch FROM now() - s.auth_time)::float8 AS auth_age;

-- name: delete_session
DELETE FROM portal_sessions s USING organisations o
WHERE s.session_hash = $1 AND o.id = s.organisation_id
RETURNING o.id, o.slug, s.subject;

-- name: purge_sessions
DELETE FROM portal_sessions
WHERE last_seen_at <= now() - $1 * interval '1 second' OR created_at <= now() - $2 * interval '1 second';

-- === portal-admin: integration records, members (issue 13 lines 3, 9) ======================================

-- name: approved_configurations_of
-- The values in force of an organisation's approved configurations; never the client secret.
SELECT id, fhir_base_url, environment, ehr, client_id, client_auth, scopes, writeback_strategy
FROM configurations WHERE organisation_id = $1 AND status = 'approved' ORDER BY id;

-- name: members_of
SELECT id, role, matched_by, value, granted_by, granted_at FROM memberships
WHERE organisation_id = $1 ORDER BY role, matched_by, value;

-- name: lock_organisation
-- Grants and revocations of one organisation one at a time, so two admins revoking each other at once
-- cannot leave it without an admin.
SELECT id FROM organisations WHERE id = $1 FOR UPDATE;

-- name: membership_of
SELECT id, role, matched_by, value FROM memberships WHERE organisation_id = $1 AND id = $2;

-- name: count_admins
SELECT count(*) FROM memberships WHERE organisation_id = $1 AND role = 'admin';

-- name: delete_membership
DELETE FROM memberships WHERE organisation_id = $1 AND id = $2;

-- name: assign_configuration
-- The demo: its sandbox configuration belongs to the demo organisation, as an Epic one.
UPDATE configurations SET organisation_id = $2, ehr = $3 WHERE id = $1 AND organisation_id IS NULL;

-- name: update_organisation_sign_in
-- The demo: its identity provider's address follows the demo's port.
UPDATE organisations SET issuer = $2, client_id = $3, client_secret = $4 WHERE id = $1;
