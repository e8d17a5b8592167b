-- anpi schema, PostgreSQL. Mirrors migrations/sqlite/0001_init.sql: the same tables and
-- columns. All timestamps are UTC milliseconds since the Unix epoch (BIGINT).

-- The contacts as last imported; one JSON document per person.
CREATE TABLE contacts (
    id          TEXT PRIMARY KEY,
    doc         TEXT NOT NULL,
    imported_at BIGINT NOT NULL
);

CREATE TABLE roll_calls (
    id              BIGSERIAL PRIMARY KEY,
    scenario        TEXT NOT NULL,
    title           TEXT NOT NULL,
    message         TEXT NOT NULL,
    buttons         TEXT NOT NULL,
    drill           BOOLEAN NOT NULL,
    deadline_ms     BIGINT NOT NULL,
    provider        TEXT NOT NULL,
    state           TEXT NOT NULL DEFAULT 'open',
    created_at      BIGINT NOT NULL,
    closed_at       BIGINT,
    recipients      BIGINT NOT NULL,
    idempotency_key TEXT UNIQUE
);

-- One row per roll call x recipient. The recipient's details are a snapshot taken at start.
CREATE TABLE deliveries (
    id                BIGSERIAL PRIMARY KEY,
    roll_call_id      BIGINT NOT NULL REFERENCES roll_calls(id),
    staff_id          TEXT NOT NULL,
    name              TEXT NOT NULL,
    department        TEXT,
    shelter           TEXT,
    kind              TEXT NOT NULL,
    call_priority     BIGINT NOT NULL,
    phones            TEXT NOT NULL,
    email             TEXT,
    provider          TEXT NOT NULL,
    chat_handle       TEXT,
    state             TEXT NOT NULL,
    attempts          BIGINT NOT NULL DEFAULT 0,
    next_attempt_at   BIGINT NOT NULL DEFAULT 0,
    lease_until       BIGINT,
    sent_at           BIGINT,
    deadline_at       BIGINT,
    message_id        TEXT,
    last_error        TEXT,
    read_at           BIGINT,
    answered_at       BIGINT,
    answer            TEXT,
    answer_at         BIGINT,
    escalated_at      BIGINT,
    escalation_reason TEXT,
    outcome           TEXT,
    outcome_at        BIGINT,
    outcome_by        TEXT,
    UNIQUE (roll_call_id, staff_id)
);

CREATE INDEX deliveries_due ON deliveries (provider, state, next_attempt_at);
CREATE INDEX deliveries_handle ON deliveries (provider, chat_handle, roll_call_id);
CREATE INDEX deliveries_deadline ON deliveries (deadline_at) WHERE state = 'sent' AND escalated_at IS NULL;
CREATE INDEX deliveries_escalated ON deliveries (roll_call_id, escalated_at) WHERE escalated_at IS NOT NULL;

-- Append-only record of everything that came back from people and of HQ's calls.
CREATE TABLE events (
    id           BIGSERIAL PRIMARY KEY,
    provider     TEXT NOT NULL,
    event_id     TEXT NOT NULL,
    roll_call_id BIGINT,
    delivery_id  BIGINT,
    from_handle  TEXT NOT NULL,
    kind         TEXT NOT NULL,
    value        TEXT,
    occurred_at  BIGINT NOT NULL,
    received_at  BIGINT NOT NULL,
    UNIQUE (provider, event_id)
);
CREATE INDEX events_roll_call ON events (roll_call_id, id);

-- Where each pull-based provider's event feed was read up to.
CREATE TABLE provider_cursors (
    provider   TEXT PRIMARY KEY,
    cursor     TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);
