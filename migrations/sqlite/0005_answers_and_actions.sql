-- What each answer means for HQ (its level), answers kept as history, HQ's notes, the
-- recipient's ふりがな and 役職, shelter phones' own buttons, and the re-send.

-- Shelter phones' answer choices (JSON, like buttons); NULL for roll calls from before,
-- whose shelter phones were sent the staff buttons.
ALTER TABLE roll_calls ADD COLUMN shelter_buttons TEXT;
ALTER TABLE roll_calls ADD COLUMN resend_after_ms INTEGER;

ALTER TABLE deliveries ADD COLUMN kana TEXT;
ALTER TABLE deliveries ADD COLUMN role TEXT;
-- The latest answer: value (existing column `answer`), label, free text, level.
ALTER TABLE deliveries ADD COLUMN answer_label TEXT;
ALTER TABLE deliveries ADD COLUMN answer_text TEXT;
ALTER TABLE deliveries ADD COLUMN answer_level INTEGER;
-- The standing answer: the first of the most severe so far (level 1 ok, 2 attention,
-- 3 urgent; 0 none). Nothing the person sends later lowers it.
ALTER TABLE deliveries ADD COLUMN level INTEGER NOT NULL DEFAULT 0;
ALTER TABLE deliveries ADD COLUMN level_value TEXT;
ALTER TABLE deliveries ADD COLUMN level_label TEXT;
ALTER TABLE deliveries ADD COLUMN level_text TEXT;
ALTER TABLE deliveries ADD COLUMN level_at INTEGER;
-- When the latest urgent answer came: one after HQ closed the entry opens it again.
ALTER TABLE deliveries ADD COLUMN urgent_at INTEGER;
-- HQ's notes on the entry: a JSON array of {at, by, text}, oldest first.
ALTER TABLE deliveries ADD COLUMN notes TEXT;
-- The re-send: due at (set when the first send went out), done at, claimed until.
ALTER TABLE deliveries ADD COLUMN resend_at INTEGER;
ALTER TABLE deliveries ADD COLUMN resent_at INTEGER;
ALTER TABLE deliveries ADD COLUMN resend_lease INTEGER;

-- Answers given before levels existed keep what they said, at the level their value
-- conventionally has.
UPDATE deliveries SET
    answer_label = answer,
    answer_level = CASE
        WHEN answer IN ('safe', 'ok', 'can_work', 'ack', 'evacuated', 'evacuating', 'at_home',
                        'sticker') THEN 1
        WHEN answer IN ('injured', 'need_help', 'needs_help', 'help', 'rescue', 'trapped') THEN 3
        ELSE 2 END
 WHERE answer IS NOT NULL;
UPDATE deliveries SET level = answer_level, level_value = answer, level_label = answer,
    level_at = answer_at, urgent_at = CASE WHEN answer_level = 3 THEN answer_at END
 WHERE answer IS NOT NULL;

CREATE INDEX deliveries_resend ON deliveries (resend_at)
    WHERE resend_at IS NOT NULL AND resent_at IS NULL;
CREATE INDEX deliveries_urgent ON deliveries (roll_call_id) WHERE level = 3;

-- Each logged answer's level, so the record says what it meant when it came.
ALTER TABLE events ADD COLUMN level INTEGER;

-- Urgent answers that came after their roll call was closed, when no open roll call of that
-- person could take them: HQ sees them until it closes each with a note.
CREATE TABLE late_answers (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    provider     TEXT NOT NULL,
    event_id     TEXT NOT NULL,
    roll_call_id INTEGER NOT NULL,
    delivery_id  INTEGER NOT NULL REFERENCES deliveries(id),
    level        INTEGER NOT NULL,
    value        TEXT NOT NULL,
    label        TEXT NOT NULL,
    text         TEXT,
    received_at  INTEGER NOT NULL,
    closed_at    INTEGER,
    closed_by    TEXT,
    note         TEXT,
    UNIQUE (provider, event_id)
);
CREATE INDEX late_answers_open ON late_answers (received_at) WHERE closed_at IS NULL;
