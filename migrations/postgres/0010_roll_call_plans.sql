-- A roll call's dispatch plan (the route chosen to reach its audience, JSON of planner::Plan)
-- and its e-mail plan (what it mails at its deadline, JSON) are its own columns, written in the
-- same transaction as the roll call. Roll calls started before keep what was stored for them
-- in provider_state.
ALTER TABLE roll_calls ADD COLUMN dispatch_plan TEXT;
ALTER TABLE roll_calls ADD COLUMN mail_plan TEXT;
UPDATE roll_calls SET mail_plan = (SELECT s.value FROM provider_state AS s
    WHERE s.provider = 'email' AND s.key = 'plan:' || roll_calls.id);
UPDATE roll_calls SET dispatch_plan = (SELECT s.value FROM provider_state AS s
    WHERE s.provider = roll_calls.provider AND s.key = 'plan/' || roll_calls.id);
DELETE FROM provider_state WHERE (provider = 'email' AND key LIKE 'plan:%')
    OR key LIKE 'plan/%';
