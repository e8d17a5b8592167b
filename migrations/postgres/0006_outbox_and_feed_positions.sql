-- PostgreSQL; mirrors migrations/sqlite/0006_outbox_and_feed_positions.sql.
-- How far each provider's receipt feed is known complete: every event the platform held up to
-- `caught_up_to` (application clock, ms) is stored. Escalation and the deadline mail wait for
-- it to pass the deadline, so a list is never built from receipts still waiting at the
-- platform. It only moves forward.
CREATE TABLE feed_positions (
    provider     TEXT PRIMARY KEY,
    caught_up_to BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL
);

-- The mail outbox: one row per mail, written when it is decided (a whole mail run in one
-- transaction), then sent one at a time and marked, so a crash sends again at most the one
-- in flight. `dedupe_key` makes deciding the same mail twice write it once.
CREATE TABLE mail_outbox (
    id              BIGSERIAL PRIMARY KEY,
    -- deadline_hq, reminder, correction, ... (what decided it)
    kind            TEXT NOT NULL,
    dedupe_key      TEXT NOT NULL UNIQUE,
    roll_call_id    BIGINT,
    -- JSON array of addresses.
    recipients      TEXT NOT NULL,
    subject         TEXT NOT NULL,
    body            TEXT NOT NULL,
    csv_name        TEXT,
    csv             BYTEA,
    -- JSON: what the kind needs later (the list a deadline mail carried, the time it is true at).
    meta            TEXT,
    -- pending, sending, sent, failed
    state           TEXT NOT NULL,
    attempts        BIGINT NOT NULL DEFAULT 0,
    -- Wall-clock ms: retries and leases pace a real SMTP server, not the roll call's clock.
    next_attempt_at BIGINT NOT NULL,
    lease_until     BIGINT,
    last_error      TEXT,
    -- Application clock, ms.
    created_at      BIGINT NOT NULL,
    sent_at         BIGINT
);
CREATE INDEX mail_outbox_due ON mail_outbox (state, next_attempt_at);
CREATE INDEX mail_outbox_roll_call ON mail_outbox (roll_call_id, id);
