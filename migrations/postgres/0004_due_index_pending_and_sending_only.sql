-- The due index holds only rows a dispatcher may claim. Sent, read, failed and escalated rows
-- leave it, so an update of such a row (escalating 100,000 at a deadline, a read receipt)
-- writes one index entry fewer, and claims do not walk past finished rows.
DROP INDEX deliveries_due;
CREATE INDEX deliveries_due ON deliveries (provider, state, next_attempt_at)
    WHERE state IN ('pending', 'sending');

-- Every reader of escalated rows asks for one roll call's, which the (roll_call_id, staff_id)
-- key already finds; the separate index only cost an entry per escalated person.
DROP INDEX deliveries_escalated;
