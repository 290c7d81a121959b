-- 0017: configurations as the portal keeps them: which EHR they are, who approves them, and revisions.
-- A configuration row holds the values IN FORCE (what launches and write-back read). Every change is a
-- revision: revision 1 proposes a new configuration, later ones propose changes; a revision's values are
-- copied into the configuration only when it is approved, so no unapproved value is ever in force.

ALTER TABLE configurations DROP CONSTRAINT configurations_status_check;
ALTER TABLE configurations
    ADD CONSTRAINT configurations_status_check
        CHECK (status IN ('pending', 'approved', 'rejected', 'retired')),
    -- epic | oracle | smart (any other SMART on FHIR EHR): decides the integration records and whether the
    -- organisation may waive the approver's EHR sign-in (Oracle Health only).
    ADD COLUMN ehr text NOT NULL DEFAULT 'smart' CHECK (ehr IN ('epic', 'oracle', 'smart')),
    -- The subject (as in memberships.value with matched_by = 'subject') of the person named to approve.
    ADD COLUMN approver text,
    ADD COLUMN retired_by text,
    ADD COLUMN retired_at timestamptz;

CREATE TABLE configuration_revisions (
    id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    configuration_id   bigint NOT NULL REFERENCES configurations (id),
    number             integer NOT NULL,          -- 1, 2, … per configuration
    -- The proposed values, the same columns as configurations.
    fhir_base_url      text NOT NULL,
    environment        text NOT NULL CHECK (environment IN ('test', 'production')),
    ehr                text NOT NULL CHECK (ehr IN ('epic', 'oracle', 'smart')),
    client_id          text NOT NULL,
    client_auth        text NOT NULL CHECK (client_auth IN ('public', 'client_secret_basic', 'private_key_jwt')),
    client_secret      bytea,                     -- sealed (context configurations.client_secret)
    scopes             text NOT NULL,
    meeting_provider   text NOT NULL,
    writeback_strategy text NOT NULL CHECK (writeback_strategy IN ('fhir-r4-put', 'fhir-r4-patch', 'none')),
    approver           text,
    -- pending → approved | rejected; a pending revision replaced by a newer one is superseded.
    state              text NOT NULL DEFAULT 'pending'
                           CHECK (state IN ('pending', 'approved', 'rejected', 'superseded')),
    proposed_by        text NOT NULL,
    proposed_at        timestamptz NOT NULL DEFAULT now(),
    decided_by         text,
    decided_at         timestamptz,
    decision_reason    text,
    -- Proof of the approver's EHR sign-in (SMART standalone launch): who (the fhirUser reference) and when.
    ehr_fhir_user      text,
    ehr_signed_in_at   timestamptz,
    UNIQUE (configuration_id, number)
);
-- serves: at most one pending revision per configuration (a new proposal supersedes the pending one)
CREATE UNIQUE INDEX configuration_revisions_one_pending ON configuration_revisions (configuration_id)
    WHERE state = 'pending';
