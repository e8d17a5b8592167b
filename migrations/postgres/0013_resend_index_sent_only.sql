-- The re-send index holds only messages still waiting to be read: a read or answered
-- delivery leaves it, so finding the next re-send (and claiming due ones) no longer walks
-- past everyone who read theirs. A second, small index holds the re-sends being sent now
-- (claimed, not yet recorded), so the earliest lapse of a claim is found without a scan
-- (a re-send claim, which sets only resend_lease, now also writes that index's entry; claims
-- are at most what the rate limit lets out at once).
DROP INDEX deliveries_resend;
CREATE INDEX deliveries_resend ON deliveries (resend_at)
    WHERE resend_at IS NOT NULL AND resent_at IS NULL AND state = 'sent';
CREATE INDEX deliveries_resend_lease ON deliveries (resend_lease)
    WHERE resend_lease IS NOT NULL AND resent_at IS NULL AND state = 'sent';
