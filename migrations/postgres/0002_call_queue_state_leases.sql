-- The call queue: which caller holds which entry, until when.
ALTER TABLE deliveries ADD COLUMN call_claimed_by TEXT;
ALTER TABLE deliveries ADD COLUMN call_claimed_until BIGINT;

-- Small per-provider state (a person's DM room, a roll call's board post id, ...).
CREATE TABLE provider_state (
    provider   TEXT NOT NULL,
    key        TEXT NOT NULL,
    value      TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (provider, key)
);

-- Named leases: which replica runs a singleton worker (the deadline timer, the receipt
-- watcher) and until when.
CREATE TABLE leases (
    name   TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    until  BIGINT NOT NULL
);
