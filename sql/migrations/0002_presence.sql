-- 0002: participants of a visit, their join links and browser sessions, and the presence event log.
-- Still no patient data: a participant is an opaque id with a role; display names typed in the lobby
-- live only in the memory of the gateway processes that relay them.

CREATE TABLE participants (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    visit_id    uuid NOT NULL REFERENCES visits (id),
    role        text NOT NULL CHECK (role IN ('provider', 'patient', 'guest')),
    guest_kind  text CHECK (guest_kind IN ('interpreter', 'family', 'caregiver', 'other')),
    fhir_user   text,            -- for providers: the EHR user's unique id (a clinician, not a patient)
    created_at  timestamptz NOT NULL DEFAULT now()
);
-- serves: participants.named_participants
CREATE INDEX participants_visit ON participants (visit_id);
-- serves: participants.ensure_provider_participant (one participant per clinician per visit)
CREATE UNIQUE INDEX participants_provider ON participants (visit_id, fhir_user) WHERE role = 'provider';
-- serves: participants.ensure_patient_participant (one patient per visit)
CREATE UNIQUE INDEX participants_patient ON participants (visit_id) WHERE role = 'patient';

-- The append-only log of what happened in a visit. Readers resume from the last id they saw.
CREATE TABLE presence_events (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    visit_id       uuid NOT NULL REFERENCES visits (id),
    participant_id uuid REFERENCES participants (id),
    kind           text NOT NULL CHECK (kind IN (
                       'lobby_entered', 'device_test_passed', 'device_test_failed', 'admitted', 'denied',
                       'connected', 'disconnected', 'left', 'removed', 'visit_ended')),
    at             timestamptz NOT NULL DEFAULT now()
);
-- serves: events.events_after (snapshot and resume of one visit, in id order), participants.admission_state,
-- events.latest_device_test (a participant's newest events, within its visit)
CREATE INDEX presence_events_visit ON presence_events (visit_id, id);

CREATE TRIGGER presence_events_append_only BEFORE UPDATE OR DELETE ON presence_events
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
