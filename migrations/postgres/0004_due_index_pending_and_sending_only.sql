-- The due index holds only rows a dispatcher may claim. Sent, read, failed and escalated rows
-- leave it, so an update of such a row (escalating 100,000 at a deadline, a read receipt)
-- writes one index entry fewer, and claims do not walk past finished rows.
DROP INDEX deliveries_due;
CREATE INDEX deliveries_due ON deliveries (provider, state, next_attempt_at)
    WHERE state IN ('pending', 'sending');
