-- HQ's action list of a roll call (escalated, answered urgently, called or written about) read
-- without touching the rest of its deliveries: during dispatch the list is empty and every HQ
-- page that asks for it gets its answer from this index alone. The condition is the store's
-- ON_ACTION_LIST, written the same way so that the planner can use the index.
CREATE INDEX deliveries_on_action_list ON deliveries (roll_call_id)
    WHERE (escalated_at IS NOT NULL OR outcome IS NOT NULL OR level = 3 OR notes IS NOT NULL);
