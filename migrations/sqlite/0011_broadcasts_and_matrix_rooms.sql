-- Roll-call and Matrix state in tables of their own, carried over from provider_state.

-- Broadcasts that went out: a roll call's board post (group_key '') and its messages to
-- department rooms (group_key: the planner's group), with when each went out and the
-- platform's id for it. Recorded before the deliveries it covers, so a crash in between
-- records them again without posting twice; the first record of a broadcast stays.
CREATE TABLE broadcasts (
    roll_call_id INTEGER NOT NULL REFERENCES roll_calls(id),
    provider     TEXT NOT NULL,
    group_key    TEXT NOT NULL,
    posted_at    INTEGER NOT NULL,
    post_id      TEXT,
    PRIMARY KEY (roll_call_id, provider, group_key)
);

-- Each Matrix user's DM room with the bot (written by `anpi matrix prepare`), when prepare
-- invited them again after they left (until they accept, a send says they left), and the
-- room found end-to-end encrypted, if one was (for the warning `anpi serve` gives at start).
CREATE TABLE matrix_rooms (
    user_id        TEXT PRIMARY KEY,
    room_id        TEXT,
    left_at        INTEGER,
    encrypted_room TEXT,
    updated_at     INTEGER NOT NULL
);

-- The checks anpi sent in Matrix rooms, for the receipts and answers that come back: which
-- roll call, to whom, the answer values in the order they were numbered, the homeserver's
-- origin_server_ts (filled in when first needed) and the check sent before it in the room.
-- sent_at is NULL for a check learnt from the homeserver afterwards (its record was lost):
-- such a row is never a room's newest check. The newest check in a room is its sent row with
-- the highest id. roll_call_id is what the check's content named, so it has no foreign key.
CREATE TABLE matrix_checks (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id      TEXT NOT NULL UNIQUE,
    room_id       TEXT,
    roll_call_id  INTEGER NOT NULL,
    to_user       TEXT,
    answer_values TEXT NOT NULL,
    origin_ts     INTEGER,
    prev_event    TEXT,
    sent_at       INTEGER
);
CREATE INDEX matrix_checks_newest ON matrix_checks (room_id, id) WHERE sent_at IS NOT NULL;

-- Carried over: `broadcast/<id>` and `room/<id>/<group>` records (JSON {"at", "post_id"};
-- anything else never counted as a record and is dropped).
INSERT INTO broadcasts (roll_call_id, provider, group_key, posted_at, post_id)
SELECT r.id, s.provider, '', json_extract(s.value, '$.at'), json_extract(s.value, '$.post_id')
FROM provider_state AS s JOIN roll_calls AS r ON s.key = 'broadcast/' || r.id
WHERE CASE WHEN json_valid(s.value) THEN json_type(s.value, '$.at') = 'integer'
    AND COALESCE(json_type(s.value, '$.post_id'), 'null') IN ('text', 'null') ELSE 0 END;
INSERT INTO broadcasts (roll_call_id, provider, group_key, posted_at, post_id)
SELECT r.id, s.provider, substr(s.key, length('room/' || r.id || '/') + 1),
    json_extract(s.value, '$.at'), json_extract(s.value, '$.post_id')
FROM provider_state AS s JOIN roll_calls AS r
    ON substr(s.key, 1, length('room/' || r.id || '/')) = 'room/' || r.id || '/'
    AND length(s.key) > length('room/' || r.id || '/')
WHERE CASE WHEN json_valid(s.value) THEN json_type(s.value, '$.at') = 'integer'
    AND COALESCE(json_type(s.value, '$.post_id'), 'null') IN ('text', 'null') ELSE 0 END;
DELETE FROM provider_state WHERE key LIKE 'broadcast/%' OR key LIKE 'room/%';

-- Carried over: Matrix `room:<user>`, `left:<user>` and the `encrypted_rooms` map.
INSERT INTO matrix_rooms (user_id, room_id, updated_at)
SELECT substr(key, 6), value, updated_at FROM provider_state
WHERE provider = 'matrix' AND key LIKE 'room:%';
INSERT INTO matrix_rooms (user_id, left_at, updated_at)
SELECT substr(key, 6), updated_at, updated_at FROM provider_state
WHERE provider = 'matrix' AND key LIKE 'left:%'
ON CONFLICT (user_id) DO UPDATE SET left_at = excluded.left_at;
INSERT INTO matrix_rooms (user_id, encrypted_room, updated_at)
SELECT e.key, e.value, s.updated_at
FROM provider_state AS s, json_each(CASE WHEN json_valid(s.value) THEN
    CASE WHEN json_type(s.value) = 'object' THEN s.value END END) AS e
WHERE s.provider = 'matrix' AND s.key = 'encrypted_rooms' AND e.type = 'text'
ON CONFLICT (user_id) DO UPDATE SET encrypted_room = excluded.encrypted_room;

-- Carried over: Matrix `event:<event id>` check records; the room of each is the one whose
-- `latest:<room>` names it, else its person's DM room. The rooms' newest checks are written
-- last, so they keep the highest ids.
CREATE TEMP TABLE old_checks AS
SELECT substr(s.key, 7) AS event_id, s.value AS doc, s.updated_at AS updated_at,
    l.key IS NOT NULL AS newest,
    COALESCE(substr(l.key, 8), m.room_id) AS room_id
FROM provider_state AS s
LEFT JOIN provider_state AS l
    ON l.provider = 'matrix' AND l.key LIKE 'latest:%' AND l.value = substr(s.key, 7)
LEFT JOIN matrix_rooms AS m ON m.user_id =
    CASE WHEN json_valid(s.value) THEN json_extract(s.value, '$.to') END
WHERE s.provider = 'matrix' AND s.key LIKE 'event:%'
    AND CASE WHEN json_valid(s.value) THEN json_type(s.value, '$.rc') = 'integer' ELSE 0 END;
INSERT INTO matrix_checks (event_id, room_id, roll_call_id, to_user, answer_values, origin_ts,
    prev_event, sent_at)
SELECT event_id, room_id, json_extract(doc, '$.rc'), json_extract(doc, '$.to'),
    CASE WHEN json_type(doc, '$.values') = 'array' THEN json_extract(doc, '$.values')
        ELSE '[]' END,
    json_extract(doc, '$.ts'), json_extract(doc, '$.prev'),
    CASE WHEN newest OR json_extract(doc, '$.to') IS NOT NULL THEN updated_at END
FROM old_checks WHERE true ORDER BY newest, updated_at, event_id
ON CONFLICT (event_id) DO NOTHING;
DROP TABLE old_checks;
DELETE FROM provider_state WHERE provider = 'matrix' AND (key LIKE 'room:%'
    OR key LIKE 'left:%' OR key LIKE 'event:%' OR key LIKE 'latest:%'
    OR key = 'encrypted_rooms');
