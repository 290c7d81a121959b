-- 0023: the clinician's live clinic queue (issue 16 line 4). Nothing new is stored about patients: the queue
-- is read from visits, participants and presence events; patient names are read live from FHIR.

-- Whether an organisation lets its clinicians see their whole department's queue (not only their own
-- visits). Off until an operator turns it on (`visitgate org department-queue`, audited).
ALTER TABLE organisations ADD COLUMN department_queue boolean NOT NULL DEFAULT false;

-- serves: queue.own_visits (a clinician's visits of today: the visits they took part in since the day began)
CREATE INDEX participants_provider_today ON participants (fhir_user, created_at) WHERE role = 'provider';
-- serves: queue.own_visits (... and the visits they launched since the day began)
CREATE INDEX provider_sessions_fhir_user ON provider_sessions (fhir_user, created_at);

-- serves: queue.department_visits (a department's visits of one configuration created today)
CREATE INDEX visits_department_today ON visits (configuration_id, department, created_at)
    WHERE department IS NOT NULL;
