-- SMS: the opt-out list, the count of messages held back, and the portal's SMS set-up.

-- name: is_opted_out
SELECT EXISTS (SELECT 1 FROM sms_opt_outs WHERE number_digest = $1);

-- name: opt_out
INSERT INTO sms_opt_outs (number_digest) VALUES ($1) ON CONFLICT (number_digest) DO NOTHING;

-- name: opt_in
DELETE FROM sms_opt_outs WHERE number_digest = $1;

-- name: count_suppressed
INSERT INTO sms_suppressed (day, messages) VALUES (current_date, 1)
ON CONFLICT (day) DO UPDATE SET messages = sms_suppressed.messages + 1;

-- name: suppressed_total
SELECT coalesce(sum(messages), 0)::bigint FROM sms_suppressed;

-- name: number_is_ours
SELECT EXISTS (SELECT 1 FROM sms_numbers WHERE number = $1 AND state <> 'released');

-- name: setup_of
SELECT terms_accepted_by, terms_accepted_at, consent_by, consent_at, send_confirmation, send_reminder,
       send_join_link
FROM sms_setups WHERE organisation_id = $1;

-- name: set_consents
INSERT INTO sms_setups (organisation_id, terms_accepted_by, terms_accepted_at, consent_by, consent_at)
VALUES ($1, CASE WHEN $2 THEN $4 END, CASE WHEN $2 THEN now() END, CASE WHEN $3 THEN $4 END,
        CASE WHEN $3 THEN now() END)
ON CONFLICT (organisation_id) DO UPDATE SET
    terms_accepted_by = CASE WHEN $2 THEN coalesce(sms_setups.terms_accepted_by, $4) END,
    terms_accepted_at = CASE WHEN $2 THEN coalesce(sms_setups.terms_accepted_at, now()) END,
    consent_by = CASE WHEN $3 THEN coalesce(sms_setups.consent_by, $4) END,
    consent_at = CASE WHEN $3 THEN coalesce(sms_setups.consent_at, now()) END;

-- name: set_messages
INSERT INTO sms_setups (organisation_id, send_confirmation, send_reminder, send_join_link)
VALUES ($1, $2, $3, $4)
ON CONFLICT (organisation_id) DO UPDATE SET
    send_confirmation = $2, send_reminder = $3, send_join_link = $4;

-- name: numbers_of
SELECT id, number, state, purchased_at FROM sms_numbers
WHERE organisation_id = $1 AND state <> 'released' ORDER BY id;

-- name: number_of
SELECT id, number, state FROM sms_numbers WHERE id = $1 AND organisation_id = $2;

-- name: add_number
INSERT INTO sms_numbers (organisation_id, number) VALUES ($1, $2) RETURNING id;

-- name: set_number_state
UPDATE sms_numbers SET state = $2, released_at = CASE WHEN $2 = 'released' THEN now() END WHERE id = $1;

-- name: links_of
SELECT l.number_id, l.configuration_id, c.fhir_base_url
FROM sms_number_links l JOIN sms_numbers n ON n.id = l.number_id JOIN configurations c ON c.id = l.configuration_id
WHERE n.organisation_id = $1 ORDER BY c.fhir_base_url;

-- name: link_number
INSERT INTO sms_number_links (configuration_id, number_id) VALUES ($1, $2)
ON CONFLICT (configuration_id) DO UPDATE SET number_id = $2;

-- name: unlink_configuration
DELETE FROM sms_number_links WHERE configuration_id = $1 AND number_id = $2;

-- name: unlink_number
DELETE FROM sms_number_links WHERE number_id = $1;

-- name: sender_for_configuration
SELECT n.number FROM sms_number_links l JOIN sms_numbers n ON n.id = l.number_id
WHERE l.configuration_id = $1 AND n.state = 'active';

-- name: start_operation
INSERT INTO sms_operations (organisation_id, kind, step, country, number_type, number_id, number, requested_by,
                            operation_url)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id;

-- name: live_configurations
-- The configurations a number may be linked to (index configurations_organisation serves it).
SELECT id, fhir_base_url, environment FROM configurations
WHERE organisation_id = $1 AND status <> 'retired' ORDER BY fhir_base_url;

-- name: operations_of
SELECT id, kind, step, country, number_type, number, error, created_at, updated_at
FROM sms_operations WHERE organisation_id = $1 ORDER BY id DESC LIMIT $2;

-- name: claim_operation
-- One unfinished operation that is due and not held by a live worker, held for $1 seconds.
UPDATE sms_operations SET lease_until = now() + make_interval(secs => $1)
WHERE id = (SELECT id FROM sms_operations
            WHERE step NOT IN ('succeeded', 'failed') AND next_poll_at <= now()
              AND (lease_until IS NULL OR lease_until < now())
            ORDER BY next_poll_at LIMIT 1 FOR UPDATE SKIP LOCKED)
RETURNING id, organisation_id, kind, step, country, number_type, number_id, operation_url, search_id, number,
          requested_by;

-- name: advance_operation
UPDATE sms_operations SET step = $2, operation_url = $3, search_id = $4, number = $5, number_id = $6, error = $7,
    updated_at = now(), next_poll_at = now() + make_interval(secs => $8), lease_until = NULL
WHERE id = $1;

-- name: release_operation
UPDATE sms_operations SET lease_until = NULL WHERE id = $1;

-- name: route_of_configuration
-- For one configuration (by its FHIR base URL): its organisation, that organisation's SMS set-up, and the
-- number linked to it. Serves the sending path (index configurations_fhir_base_url, then the primary keys).
SELECT c.id AS configuration_id, c.organisation_id, s.terms_accepted_at IS NOT NULL AS terms_accepted,
       s.consent_at IS NOT NULL AS consent_given, s.send_confirmation, s.send_reminder, s.send_join_link,
       (SELECT n.number FROM sms_number_links l JOIN sms_numbers n ON n.id = l.number_id
        WHERE l.configuration_id = c.id AND n.state = 'active') AS sender
FROM configurations c LEFT JOIN sms_setups s ON s.organisation_id = c.organisation_id
WHERE c.fhir_base_url = $1;
