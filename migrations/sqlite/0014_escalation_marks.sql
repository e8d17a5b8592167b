-- A deadline escalates by moving a mark, not by writing every unread delivery. Each pass of
-- the deadline worker adds one row per open roll call: everything sent, unread and not
-- otherwise escalated whose deadline is at or before `through` is on the action list from
-- then on, escalated at the first mark at or after its deadline. A delivery read or
-- answered after that keeps its escalation time in its own escalated_at, written with the
-- read. Deliveries escalated before this schema keep theirs.
CREATE TABLE escalation_marks (
    roll_call_id INTEGER NOT NULL REFERENCES roll_calls (id),
    through      INTEGER NOT NULL,
    PRIMARY KEY (roll_call_id, through)
);
-- Per roll call, so the next deadline after its mark is the first entry past it.
DROP INDEX deliveries_deadline;
CREATE INDEX deliveries_deadline ON deliveries (roll_call_id, deadline_at)
    WHERE state = 'sent' AND escalated_at IS NULL;
