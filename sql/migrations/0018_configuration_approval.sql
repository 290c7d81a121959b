-- 0018: what the portal's approval flow and the launch side's refusals need beyond 0017.

-- Oracle Health's set-up has no approver step: an organisation may waive the approver's EHR sign-in for its
-- Oracle Health configurations (an admin's save then approves, audited as waived). Epic's never is.
ALTER TABLE organisations ADD COLUMN waive_oracle_approval boolean NOT NULL DEFAULT false;

-- Launches refused before any outbound request, counted per configuration (NULL: an `iss` nobody registered),
-- reason and day, for the error report. Counts only: no iss, no launch, nothing about who launched.
CREATE TABLE launch_refusals (
    configuration_id bigint REFERENCES configurations (id),
    reason           text NOT NULL,
    day              date NOT NULL,
    count            bigint NOT NULL DEFAULT 0
);
-- serves: launch.count_launch_refusal (the upsert's conflict target; refusals of unknown `iss` meet on 0)
CREATE UNIQUE INDEX launch_refusals_key ON launch_refusals ((coalesce(configuration_id, 0)), reason, day);

-- serves: configurations.organisation_configurations (an admin's list of their organisation's configurations)
CREATE INDEX configurations_organisation ON configurations (organisation_id);
