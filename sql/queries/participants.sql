-- Participants of a visit (gateway.participants): created by launch, read by presence.

-- name: ensure_provider_participant
WITH found AS (
    SELECT id FROM participants WHERE visit_id = $1 AND role = 'provider' AND fhir_user = $2
), created AS (
    INSERT INTO participants (visit_id, role, fhir_user)
    SELECT $1, 'provider', $2 WHERE NOT EXISTS (SELECT 1 FROM found)
    ON CONFLICT DO NOTHING
    RETURNING id
)
SELECT id FROM found UNION ALL SELECT id FROM created;

-- name: ensure_patient_participant
WITH found AS (
    SELECT id FROM participants WHERE visit_id = $1 AND role = 'patient'
), created AS (
    INSERT INTO participants (visit_id, role)
    SELECT $1, 'patient' WHERE NOT EXISTS (SELECT 1 FROM found)
    ON CONFLICT DO NOTHING
    RETURNING id
)
SELECT id FROM found UNION ALL SELECT id FROM created;

-- name: named_participants
-- The participants of a visit who type a display name in the lobby (patient, guests); serves the snapshot's
-- question for names another process holds in memory.
SELECT id FROM participants WHERE visit_id = $1 AND role <> 'provider';

-- name: add_guest
INSERT INTO participants (visit_id, role, guest_kind) VALUES ($1, 'guest', $2) RETURNING id;

-- name: get_participant
SELECT id, visit_id, role, guest_kind, fhir_user FROM participants WHERE id = $1;

-- name: admission_state
-- The participant's latest admission decision (admitted, denied or removed), or no row: read newest first
-- through presence_events_visit (visit_id, id), within the participant's own visit.
SELECT e.kind
FROM presence_events e
WHERE e.visit_id = (SELECT p.visit_id FROM participants p WHERE p.id = $1)
  AND e.participant_id = $1
  AND e.kind IN ('admitted', 'denied', 'removed')
ORDER BY e.id DESC
LIMIT 1;
