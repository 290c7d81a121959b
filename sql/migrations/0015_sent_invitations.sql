-- 0015: the invitations a clinician sent from the provider view, so the view can list them with Revoke and
-- Re-send. The participant (its role and guest kind are on participants) and the channel only: never the
-- address or number it went to, and never the link.
CREATE TABLE sent_invitations (
    participant_id uuid PRIMARY KEY REFERENCES participants (id) ON DELETE CASCADE,  -- serves: invites.invitation
    visit_id       uuid NOT NULL REFERENCES visits (id),
    channel        text NOT NULL CHECK (channel IN ('email', 'sms', 'copy')),  -- the last way it was sent
    sent_at        timestamptz NOT NULL DEFAULT now()
);
-- serves: invites.list_invitations
CREATE INDEX sent_invitations_visit ON sent_invitations (visit_id, sent_at);
