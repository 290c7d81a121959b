-- 0009: a launch and the provider page it opens belong to the browser that started the launch.
-- /launch gives the browser a random key in a `__Host-` cookie that is Partitioned (CHIPS), so it is kept
-- even in the EHR's cross-site iframe with third-party cookies blocked. Only a hash of the key is stored,
-- next to the launch state and then next to the provider session; the callback and every provider page
-- (view, renew, room, invite, the presence socket) need the cookie as well as the state or the handle.
-- Rows made before this migration have no key and so match no browser: a launch in flight at the upgrade
-- starts again from the EHR, and so does a clinician whose provider page was open.
ALTER TABLE launch_states
    ADD COLUMN browser_hash bytea,  -- sha256 of the browser key of the launch's /launch request
    ADD COLUMN launch_ref   bytea;  -- the EHR's `launch` value, sealed: to start the launch again in a new
                                    -- window when the browser did not keep the cookie
ALTER TABLE provider_sessions
    ADD COLUMN browser_hash bytea;  -- sha256 of the browser key the session's launch was bound to
