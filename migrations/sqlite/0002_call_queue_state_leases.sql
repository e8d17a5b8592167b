-- The call queue: which caller holds which entry, until when.
ALTER TABLE deliveries ADD COLUMN call_claimed_by TEXT;
ALTER TABLE deliveries ADD COLUMN call_claimed_until INTEGER;

-- Small per-provider state (a person's DM room, a roll call's board post id, ...).
CREATE TABLE provider_state (
    provider   TEXT NOT NULL,
    key        TEXT NOT NULL,
    value      TEXT NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (provider, key)
);

-- Named leases: which process runs a singleton worker (the deadline timer) and until when.
CREATE TABLE leases (
    name   TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    until  INTEGER NOT NULL
);
