-- 0023: the clinician's live clinic queue (issue 16 line 4). Nothing new is stored about patients: the queue
-- is read from visits, participants and presence events; patient names are read live from FHIR.

-- Whether an organisation lets its clinicians see their whole department's queue (not only their own
-- visits). Off until an operator turns it on (`visitgate org department-queue`, audited).
ALTER TABLE organisations ADD COLUMN department_queue boolean NOT NULL DEFAULT false;

-- serves: queue.own_visits (a clinician's visits of one configuration created today: their provider
-- participant rows since the day began; a participant is made after its visit, so none of today's is older)
CREATE INDEX participants_provider_today ON participants (fhir_user, created_at) WHERE role = 'provider';

-- serves: queue.department_visits (a department's visits of one configuration created today)
CREATE INDEX visits_department_today ON visits (configuration_id, department, created_at)
    WHERE department IS NOT NULL;
