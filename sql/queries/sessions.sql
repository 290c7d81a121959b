-- name: provider_identity
-- Who a provider handle speaks for: enough to authenticate a websocket, nothing more.
SELECT s.visit_id, s.fhir_user
FROM provider_sessions s
WHERE s.handle_hash = $1 AND s.expires_at > now();
