-- What a roll call's message asks people to do, one sentence per route capability (JSON of
-- scenario::Asks). NULL: the defaults (roll calls started before this column existed).
ALTER TABLE roll_calls ADD COLUMN asks TEXT;
