-- JMA triggers: every telegram anpi read and what it decided, the per-rule state of events
-- (what "seen before" means to the decision), and which telegram URLs were fetched.

-- One row per telegram, per scope ('live': the feed; 'replay': `anpi jma replay`).
CREATE TABLE jma_telegrams (
    id                   INTEGER PRIMARY KEY AUTOINCREMENT,
    scope                TEXT NOT NULL,
    dedupe_key           TEXT NOT NULL,
    source               TEXT NOT NULL,
    code                 TEXT NOT NULL,
    kind                 TEXT NOT NULL,
    status               TEXT NOT NULL,
    info_type            TEXT NOT NULL,
    event_ids            TEXT NOT NULL,
    serial               TEXT NOT NULL,
    head_title           TEXT NOT NULL,
    headline             TEXT NOT NULL,
    sent_at              INTEGER NOT NULL,
    reported_at          INTEGER NOT NULL,
    received_at          INTEGER NOT NULL,
    action               TEXT NOT NULL,
    rule                 TEXT,
    reason               TEXT NOT NULL,
    -- The roll call the decision is about (started, upgraded, retracted, told about).
    roll_call_id         INTEGER,
    -- A roll call the decision made besides (the retraction message).
    related_roll_call_id INTEGER,
    -- Every rule's decision, JSON.
    decisions            TEXT NOT NULL,
    UNIQUE (scope, dedupe_key)
);
CREATE INDEX jma_telegrams_roll_call ON jma_telegrams (roll_call_id);
CREATE INDEX jma_telegrams_related ON jma_telegrams (related_roll_call_id);

-- Per rule: an event (EventID), an office's episode or snapshot group; the state is JSON.
CREATE TABLE jma_events (
    scope        TEXT NOT NULL,
    rule         TEXT NOT NULL,
    key          TEXT NOT NULL,
    state        TEXT NOT NULL,
    started_at   INTEGER,
    updated_at   INTEGER NOT NULL,
    PRIMARY KEY (scope, rule, key)
);
CREATE INDEX jma_events_started ON jma_events (scope, rule, started_at);

-- Telegram URLs already fetched from the feeds: each is fetched once.
CREATE TABLE jma_fetched (
    url        TEXT PRIMARY KEY,
    fetched_at INTEGER NOT NULL
);
