-- name: provider_identity
-- Who a provider handle speaks for, in a browser holding the key its session is bound to (one of $2): enough to authenticate a
-- websocket, nothing more.
SELECT s.visit_id, s.fhir_user, extract(epoch FROM h.expires_at - now())::float8 AS handle_expires_in
FROM provider_handles h JOIN provider_sessions s ON s.handle_hash = h.session_hash
WHERE h.handle_hash = $1 AND s.browser_hash = ANY($2::bytea[]) AND h.expires_at > now() AND s.expires_at > now();
