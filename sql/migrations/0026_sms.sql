-- 0026: SMS. The opt-out list (keyed digests of patients' numbers, never the numbers), the messages not sent
-- because of it (counted by day), and each organisation's SMS set-up in the portal: consents, which messages
-- go out, the sender numbers it bought (its own numbers, not patient data), which FHIR base URLs each serves,
-- and the carrier's long-running operations (search, purchase, release) being followed, so that a page reload
-- or a gateway restart picks them up where they stood.

CREATE TABLE sms_opt_outs (
    -- HMAC-SHA256 of the E.164 number with the gateway's lookup key (gateway.security.Sealer.lookup,
    -- namespace sms_opt_out); serves: sms.is_opted_out, sms.opt_out, sms.opt_in
    number_digest bytea PRIMARY KEY,
    opted_out_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE sms_suppressed (
    day      date PRIMARY KEY,           -- serves: sms.count_suppressed (one upsert per message not sent)
    messages bigint NOT NULL DEFAULT 0
);

CREATE TABLE sms_setups (
    organisation_id   bigint PRIMARY KEY REFERENCES organisations (id),  -- serves: sms.setup_of
    terms_accepted_by text,
    terms_accepted_at timestamptz,
    consent_by        text,             -- consent to send SMS to patients on the organisation's behalf
    consent_at        timestamptz,
    send_confirmation boolean NOT NULL DEFAULT true,
    send_reminder     boolean NOT NULL DEFAULT true,
    send_join_link    boolean NOT NULL DEFAULT true
);

CREATE TABLE sms_numbers (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    organisation_id bigint NOT NULL REFERENCES organisations (id),
    number          text NOT NULL CHECK (number ~ '^\+[1-9][0-9]{1,14}$'),  -- the organisation's sender, E.164
    state           text NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'releasing', 'released')),
    purchased_at    timestamptz NOT NULL DEFAULT now(),
    released_at     timestamptz
);
-- serves: sms.numbers_of
CREATE INDEX sms_numbers_organisation ON sms_numbers (organisation_id, id);
-- serves: sms.number_is_ours (inbound messages to one of our numbers); a number is live once
CREATE UNIQUE INDEX sms_numbers_live ON sms_numbers (number) WHERE state <> 'released';

CREATE TABLE sms_number_links (
    -- One sender per configuration (FHIR base URL); one number may serve several.
    configuration_id bigint PRIMARY KEY REFERENCES configurations (id),  -- serves: sms.sender_for_configuration
    number_id        bigint NOT NULL REFERENCES sms_numbers (id)
);
-- serves: sms.links_of (the configurations one number serves), sms.unlink_number
CREATE INDEX sms_number_links_number ON sms_number_links (number_id);

CREATE TABLE sms_operations (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    organisation_id bigint NOT NULL REFERENCES organisations (id),
    kind            text NOT NULL CHECK (kind IN ('purchase', 'release')),
    -- purchase: requested -> searching -> purchasing -> succeeded | failed; release: releasing -> succeeded | failed
    step            text NOT NULL CHECK (step IN ('requested', 'searching', 'purchasing', 'releasing',
                                                   'succeeded', 'failed')),
    country         text NOT NULL DEFAULT 'US' CHECK (country ~ '^[A-Z]{2}$'),
    number_type     text NOT NULL DEFAULT 'tollFree' CHECK (number_type IN ('tollFree', 'geographic')),
    number_id       bigint REFERENCES sms_numbers (id),
    operation_url   text,               -- the carrier's operation-location being followed
    search_id       text,
    number          text,               -- the organisation's number found, bought or released
    error           text,
    requested_by    text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    next_poll_at    timestamptz NOT NULL DEFAULT now(),
    lease_until     timestamptz
);
-- serves: sms.claim_operation (unfinished operations, the most overdue first)
CREATE INDEX sms_operations_due ON sms_operations (next_poll_at) WHERE step NOT IN ('succeeded', 'failed');
-- serves: sms.operations_of
CREATE INDEX sms_operations_organisation ON sms_operations (organisation_id, id);
