-- 0021: the visit's department, from the provider launch's context (the launch URL's `department`
-- parameter that the provider integration record names, or the token response's), for the usage report
-- and the department queue; and each organisation's own time zone for its reports and messages.
-- A department is an organisational identifier the EHR sends (never patient data).

-- The `department` launch parameter, kept from the first leg to the callback (NULL: none was sent).
ALTER TABLE launch_states ADD COLUMN department text;

-- The department of the first provider launch that named one; patient launches never set it.
ALTER TABLE visits ADD COLUMN department text;

-- An IANA zone name (e.g. Europe/Paris); NULL: the gateway's VISITGATE_TIME_ZONE.
ALTER TABLE organisations ADD COLUMN time_zone text;
