-- The clinician's clinic queue (gateway.clinic_queue): which of today's visits a clinician may watch.
-- Read by the queue page (launch) for patient names and by the queue socket (presence) for live events.

-- name: queue_owner
-- What the queue of a clinician who launched into visit $1 is drawn from: that visit's configuration (the
-- EHR the clinician's id belongs to), its department, and whether its organisation shares department queues.
SELECT v.configuration_id, c.organisation_id, v.department,
       COALESCE(o.department_queue, false) AS department_queue
FROM visits v
JOIN configurations c ON c.id = v.configuration_id
LEFT JOIN organisations o ON o.id = c.organisation_id
WHERE v.id = $1;

-- name: own_visits
-- Visits of configuration $2 created in [$3, $4) that the clinician $1 opened: launched (a provider session
-- of theirs, kept 12 hours) or took part in (their provider participant, kept). Both are made after the
-- visit, so none of today's visits is found through an older row.
SELECT v.id, v.created_at, v.patient_ref, v.department
FROM visits v
WHERE v.id IN (SELECT p.visit_id FROM participants p
               WHERE p.role = 'provider' AND p.fhir_user = $1 AND p.created_at >= $3
               UNION
               SELECT s.visit_id FROM provider_sessions s WHERE s.fhir_user = $1 AND s.created_at >= $3)
  AND v.configuration_id = $2 AND v.created_at >= $3 AND v.created_at < $4
ORDER BY v.created_at, v.id
LIMIT $5;

-- name: department_visits
-- Visits of configuration $1 in department $2 created in [$3, $4).
SELECT v.id, v.created_at, v.patient_ref, v.department
FROM visits v
WHERE v.configuration_id = $1 AND v.department = $2 AND v.created_at >= $3 AND v.created_at < $4
ORDER BY v.created_at, v.id
LIMIT $5;

-- name: set_department_queue
-- An organisation's department-queue setting: its previous value, or no row when there is no such organisation.
UPDATE organisations o SET department_queue = $2
FROM (SELECT id, department_queue FROM organisations WHERE slug = $1 FOR UPDATE) before
WHERE o.id = before.id
RETURNING o.id, before.department_queue AS was;

-- name: visit_row
-- One visit, as the queue lists it.
SELECT v.id, v.created_at, v.patient_ref, v.department FROM visits v WHERE v.id = $1;
