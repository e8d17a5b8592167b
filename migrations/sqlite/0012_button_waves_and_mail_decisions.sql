-- The last roll-call state kept in provider_state moves to the roll call's own row: how far
-- its button follow-up wave got (JSON of dispatch::WaveState) and the note of its deadline
-- mails being decided (written in the same transaction as those mails).
ALTER TABLE roll_calls ADD COLUMN button_wave TEXT;
ALTER TABLE roll_calls ADD COLUMN mail_decided TEXT;

-- Carried over: `buttons/<id>` (written under the roll call's provider) and the e-mail
-- worker's `rollcall:<id>`; a key under any other provider never counted and is dropped.
UPDATE roll_calls SET button_wave = (
    SELECT s.value FROM provider_state AS s
    WHERE s.provider = roll_calls.provider AND s.key = 'buttons/' || roll_calls.id);
UPDATE roll_calls SET mail_decided = (
    SELECT s.value FROM provider_state AS s
    WHERE s.provider = 'email' AND s.key = 'rollcall:' || roll_calls.id);
DELETE FROM provider_state
WHERE key LIKE 'buttons/%' OR (provider = 'email' AND key LIKE 'rollcall:%');
