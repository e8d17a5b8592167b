-- How far each provider's receipt feed is known complete: every event the platform held up to
-- `caught_up_to` (application clock, ms) is stored. Escalation and the deadline mail wait for
-- it to pass the deadline, so a list is never built from receipts still waiting at the
-- platform. It only moves forward.
CREATE TABLE feed_positions (
    provider     TEXT PRIMARY KEY,
    caught_up_to INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL
);

-- The mail outbox: one row per mail, written when it is decided (a whole mail run in one
-- transaction), then sent one at a time and marked, so a crash sends again at most the one
-- in flight. `dedupe_key` makes deciding the same mail twice write it once.
CREATE TABLE mail_outbox (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    -- deadline_hq, reminder, correction, ... (what decided it)
    kind            TEXT NOT NULL,
    dedupe_key      TEXT NOT NULL UNIQUE,
    roll_call_id    INTEGER,
    -- JSON array of addresses.
    recipients      TEXT NOT NULL,
    subject         TEXT NOT NULL,
    body            TEXT NOT NULL,
    csv_name        TEXT,
    csv             BLOB,
    -- JSON: what the kind needs later (the list a deadline mail carried, the time it is true at).
    meta            TEXT,
    -- pending, sending, sent, failed
    state           TEXT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    -- Wall-clock ms: retries and leases pace a real SMTP server, not the roll call's clock.
    next_attempt_at INTEGER NOT NULL,
    lease_until     INTEGER,
    last_error      TEXT,
    -- Application clock, ms.
    created_at      INTEGER NOT NULL,
    sent_at         INTEGER
);
CREATE INDEX mail_outbox_due ON mail_outbox (state, next_attempt_at);
CREATE INDEX mail_outbox_roll_call ON mail_outbox (roll_call_id, id);
