-- The last roll-call state kept in provider_state moves to a table of its own, one row per
-- roll call: how far its button follow-up wave got (JSON of dispatch::WaveState) and the note
-- of its deadline mails being decided (written in the same transaction as those mails). Not
-- columns of roll_calls: a wave's progress is written after every step, and on PostgreSQL an
-- update of the roll call's row would wait for every receipt batch holding it open.
CREATE TABLE roll_call_work (
    roll_call_id INTEGER PRIMARY KEY REFERENCES roll_calls(id),
    button_wave  TEXT,
    mail_decided TEXT
);

-- Carried over: `buttons/<id>` (written under the roll call's provider) and the e-mail
-- worker's `rollcall:<id>`; a key under any other provider never counted and is dropped.
INSERT INTO roll_call_work (roll_call_id, button_wave, mail_decided)
SELECT r.id,
    (SELECT s.value FROM provider_state AS s
     WHERE s.provider = r.provider AND s.key = 'buttons/' || r.id),
    (SELECT s.value FROM provider_state AS s
     WHERE s.provider = 'email' AND s.key = 'rollcall:' || r.id)
FROM roll_calls AS r
WHERE EXISTS (SELECT 1 FROM provider_state AS s
    WHERE (s.provider = r.provider AND s.key = 'buttons/' || r.id)
       OR (s.provider = 'email' AND s.key = 'rollcall:' || r.id));
DELETE FROM provider_state
WHERE key LIKE 'buttons/%' OR (provider = 'email' AND key LIKE 'rollcall:%');
