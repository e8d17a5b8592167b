-- A claimed delivery's next_attempt_at is the end of its lease, so expired leases are found
-- on the same (provider, state, next_attempt_at) index as due pending rows.
UPDATE deliveries SET next_attempt_at = lease_until
 WHERE state = 'sending' AND lease_until IS NOT NULL;
