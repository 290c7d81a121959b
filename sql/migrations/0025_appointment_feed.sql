-- The EHR's appointment feed (HL7v2 SIU over MLLP, or FHIR Appointment polling) and the durable schedule of
-- the confirmations and reminders it drives. Only the appointment's identifiers (sealed FHIR ids and their
-- keyed digests), times and status are kept: no name, phone number, email address or MRN from a message.

-- How each configuration's feed comes in and what goes out.
CREATE TABLE appointment_feeds (
    configuration_id bigint PRIMARY KEY REFERENCES configurations (id),
    mllp_host        text NOT NULL DEFAULT '127.0.0.1',
    mllp_port        integer CHECK (mllp_port BETWEEN 1 AND 65535),  -- NULL: no HL7 listener
    mllp_tls_cert    text,      -- path of a PEM certificate chain; with the key, the listener speaks TLS
    mllp_tls_key     text,      -- path of its PEM private key (the key itself is never stored here)
    fhir_polling     boolean NOT NULL DEFAULT false,
    poll_interval    integer NOT NULL DEFAULT 60 CHECK (poll_interval >= 1),
    poll_due_at      timestamptz,  -- when a process polls next (one process per turn)
    poll_watermark   timestamptz,  -- the newest Appointment.meta.lastUpdated taken in so far
    reminder_offsets integer[] NOT NULL DEFAULT '{1440,15}',  -- minutes before the start
    messages         text[] NOT NULL DEFAULT '{booked,changed,cancelled,reminder}',
    channels         text[] NOT NULL DEFAULT '{email,sms}',
    updated_at       timestamptz NOT NULL DEFAULT now()
);
-- serves: appointments.set_feed (one configuration per listening address; several processes share it
-- with SO_REUSEPORT)
CREATE UNIQUE INDEX appointment_feeds_mllp ON appointment_feeds (mllp_host, mllp_port) WHERE mllp_port IS NOT NULL;

-- The appointments the feed told us about.
CREATE TABLE appointments (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    configuration_id bigint NOT NULL REFERENCES configurations (id),
    appointment_key  bytea NOT NULL,        -- keyed digest of the FHIR Appointment id
    appointment_ref  bytea NOT NULL,        -- sealed FHIR Appointment id
    patient_ref      bytea,                 -- sealed FHIR Patient id, when known
    encounter_ref    bytea,                 -- sealed FHIR Encounter id, when known
    starts_at        timestamptz NOT NULL,
    ends_at          timestamptz,
    status           text NOT NULL CHECK (status IN ('booked', 'cancelled')),
    source_time      timestamptz NOT NULL,  -- when the EHR made the change we last applied (MSH-7, lastUpdated)
    revision         integer NOT NULL DEFAULT 1,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
-- serves: appointments.upsert_appointment, appointments.find_appointment (one row per FHIR Appointment)
CREATE UNIQUE INDEX appointments_key ON appointments (configuration_id, appointment_key);

-- One row per message to send: (appointment, kind, offset, channel) for the start time (reminders) or the
-- revision (confirmations) it was planned for. The row id is the carrier's idempotency key.
CREATE TABLE appointment_messages (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    appointment_id   uuid NOT NULL REFERENCES appointments (id),
    kind             text NOT NULL CHECK (kind IN ('booked', 'changed', 'cancelled', 'reminder')),
    offset_minutes   integer NOT NULL DEFAULT 0,
    channel          text NOT NULL CHECK (channel IN ('email', 'sms')),
    revision         integer NOT NULL,      -- the appointment's revision (confirmations); 0 for reminders
    starts_at        timestamptz NOT NULL,  -- the start the message speaks of
    due_at           timestamptz NOT NULL,
    state            text NOT NULL DEFAULT 'pending'
                     CHECK (state IN ('pending', 'sending', 'sent', 'withdrawn', 'skipped', 'failed')),
    claimed_by       text,
    claimed_until    timestamptz,
    attempts         integer NOT NULL DEFAULT 0,
    first_tried_at   timestamptz,           -- kept for carriers whose idempotency needs the first attempt's time
    done_at          timestamptz,
    outcome          text,                  -- a reason code for skipped and failed messages
    created_at       timestamptz NOT NULL DEFAULT now()
);
-- serves: appointments.plan_messages (exactly one message per appointment, kind, offset, channel and occasion)
CREATE UNIQUE INDEX appointment_messages_once
    ON appointment_messages (appointment_id, kind, offset_minutes, channel, revision, starts_at);
-- serves: appointments.claim_due (pending messages that are due)
CREATE INDEX appointment_messages_due ON appointment_messages (due_at) WHERE state = 'pending';
-- serves: appointments.claim_due (claims whose process died)
CREATE INDEX appointment_messages_lapsed ON appointment_messages (claimed_until) WHERE state = 'sending';

-- HL7 message control ids (MSH-10) seen per configuration, so a message sent again is ACKed, not applied twice.
CREATE TABLE hl7_control_ids (
    configuration_id bigint NOT NULL REFERENCES configurations (id),
    control_id       text NOT NULL,
    received_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (configuration_id, control_id)  -- serves: appointments.note_control_id
);
-- serves: appointments.forget_control_ids (kept a month: interface engines resend within hours)
CREATE INDEX hl7_control_ids_received ON hl7_control_ids (received_at);
