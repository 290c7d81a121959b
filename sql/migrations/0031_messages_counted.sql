-- 0031: the usage report counts every message sent about a visit, not only the join-link invitations: each
-- invitation and re-send from the provider view, and each appointment confirmation and reminder the
-- appointment feed sent (presence.usage's docstring, docs/reports.md). The senders add to visit_usage's
-- counters in the transaction that records the send; the usage follower no longer writes them (one writer per
-- column: the follower the presence figures, the senders these increments).

-- The visit an appointment message was about, set when it is marked sent (the visit of its join link, or for a
-- message without a link the visit of its encounter if there is one). An opaque id, as visit_usage.visit_id.
-- No index: no query reads messages by visit (the counts live on visit_usage).
ALTER TABLE appointment_messages ADD COLUMN visit_id uuid REFERENCES visits (id);

COMMENT ON COLUMN visit_usage.sms_sent IS
    'messages sent about the visit by SMS: invitations and re-sends, appointment confirmations and reminders';
COMMENT ON COLUMN visit_usage.email_sent IS 'the same, by email';

-- Until now the counters held the invitations by the channel of their last send, refreshed only when an event
-- of the visit was counted, and only for visits that had an event. Start the increments from that figure taken
-- now for every visit with an invitation (earlier re-sends were never kept and cannot be counted; appointment
-- messages sent before this migration name no visit and are not counted).
INSERT INTO visit_usage (visit_id, organisation_id, opened_at, environment, meeting_provider, department,
                         sms_sent, email_sent)
SELECT v.id, c.organisation_id, v.created_at, c.environment, v.meeting_provider, v.department, i.sms, i.email
FROM (SELECT visit_id, count(*) FILTER (WHERE channel = 'sms') AS sms,
             count(*) FILTER (WHERE channel = 'email') AS email
      FROM sent_invitations GROUP BY visit_id) i
JOIN visits v ON v.id = i.visit_id
JOIN configurations c ON c.id = v.configuration_id
ON CONFLICT (visit_id) DO UPDATE SET sms_sent = EXCLUDED.sms_sent, email_sent = EXCLUDED.email_sent;
