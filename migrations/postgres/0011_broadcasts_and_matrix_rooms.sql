-- PostgreSQL; mirrors migrations/sqlite/0011_broadcasts_and_matrix_rooms.sql.
-- Roll-call and Matrix state in tables of their own, carried over from provider_state.

-- Broadcasts that went out: a roll call's board post (group_key '') and its messages to
-- department rooms (group_key: the planner's group), with when each went out and the
-- platform's id for it. Recorded before the deliveries it covers, so a crash in between
-- records them again without posting twice; the first record of a broadcast stays.
CREATE TABLE broadcasts (
    roll_call_id BIGINT NOT NULL REFERENCES roll_calls(id),
    provider     TEXT NOT NULL,
    group_key    TEXT NOT NULL,
    posted_at    BIGINT NOT NULL,
    post_id      TEXT,
    PRIMARY KEY (roll_call_id, provider, group_key)
);

-- Each Matrix user's DM room with the bot (written by `anpi matrix prepare`), when prepare
-- invited them again after they left (until they accept, a send says they left), and the
-- room found end-to-end encrypted, if one was (for the warning `anpi serve` gives at start).
CREATE TABLE matrix_rooms (
    user_id        TEXT PRIMARY KEY,
    room_id        TEXT,
    left_at        BIGINT,
    encrypted_room TEXT,
    updated_at     BIGINT NOT NULL
);

-- The checks anpi sent in Matrix rooms, for the receipts and answers that come back: which
-- roll call, to whom, the answer values in the order they were numbered, the homeserver's
-- origin_server_ts (filled in when first needed) and the check sent before it in the room.
-- sent_at is NULL for a check learnt from the homeserver afterwards (its record was lost):
-- such a row is never a room's newest check. The newest check in a room is its sent row with
-- the highest id. roll_call_id is what the check's content named, so it has no foreign key.
CREATE TABLE matrix_checks (
    id            BIGSERIAL PRIMARY KEY,
    event_id      TEXT NOT NULL UNIQUE,
    room_id       TEXT,
    roll_call_id  BIGINT NOT NULL,
    to_user       TEXT,
    answer_values TEXT NOT NULL,
    origin_ts     BIGINT,
    prev_event    TEXT,
    sent_at       BIGINT
);
CREATE INDEX matrix_checks_newest ON matrix_checks (room_id, id) WHERE sent_at IS NOT NULL;

-- What was stored as JSON text, or NULL where it is not JSON (such a value never counted).
CREATE FUNCTION pg_temp.anpi_json(t TEXT) RETURNS JSONB LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    RETURN t::jsonb;
EXCEPTION WHEN others THEN
    RETURN NULL;
END $$;

-- Carried over: `broadcast/<id>` and `room/<id>/<group>` records (JSON {"at", "post_id"};
-- anything else never counted as a record and is dropped).
CREATE TEMP TABLE old_broadcasts AS
SELECT r.id AS roll_call_id, s.provider,
    CASE WHEN s.key = 'broadcast/' || r.id THEN ''
        ELSE substr(s.key, length('room/' || r.id || '/') + 1) END AS group_key,
    pg_temp.anpi_json(s.value) AS doc
FROM provider_state AS s JOIN roll_calls AS r
    ON s.key = 'broadcast/' || r.id
    OR (substr(s.key, 1, length('room/' || r.id || '/')) = 'room/' || r.id || '/'
        AND length(s.key) > length('room/' || r.id || '/'));
INSERT INTO broadcasts (roll_call_id, provider, group_key, posted_at, post_id)
SELECT roll_call_id, provider, group_key, (doc ->> 'at')::bigint, doc ->> 'post_id'
FROM old_broadcasts
WHERE jsonb_typeof(doc) = 'object' AND jsonb_typeof(doc -> 'at') = 'number'
    AND (doc ->> 'at') ~ '^-?[0-9]{1,18}$'
    AND COALESCE(jsonb_typeof(doc -> 'post_id'), 'null') IN ('string', 'null');
DROP TABLE old_broadcasts;
DELETE FROM provider_state WHERE key LIKE 'broadcast/%' OR key LIKE 'room/%';

-- Carried over: Matrix `room:<user>`, `left:<user>` and the `encrypted_rooms` map.
INSERT INTO matrix_rooms (user_id, room_id, updated_at)
SELECT substr(key, 6), value, updated_at FROM provider_state
WHERE provider = 'matrix' AND key LIKE 'room:%';
INSERT INTO matrix_rooms (user_id, left_at, updated_at)
SELECT substr(key, 6), updated_at, updated_at FROM provider_state
WHERE provider = 'matrix' AND key LIKE 'left:%'
ON CONFLICT (user_id) DO UPDATE SET left_at = EXCLUDED.left_at;
INSERT INTO matrix_rooms (user_id, encrypted_room, updated_at)
SELECT e.key, e.value #>> '{}', s.updated_at
FROM provider_state AS s, LATERAL jsonb_each(
    CASE WHEN jsonb_typeof(pg_temp.anpi_json(s.value)) = 'object'
        THEN pg_temp.anpi_json(s.value) ELSE '{}'::jsonb END) AS e
WHERE s.provider = 'matrix' AND s.key = 'encrypted_rooms' AND jsonb_typeof(e.value) = 'string'
ON CONFLICT (user_id) DO UPDATE SET encrypted_room = EXCLUDED.encrypted_room;

-- Carried over: Matrix `event:<event id>` check records; the room of each is the one whose
-- `latest:<room>` names it, else its person's DM room. The rooms' newest checks are written
-- last, so they keep the highest ids.
CREATE TEMP TABLE old_checks AS
SELECT substr(s.key, 7) AS event_id, pg_temp.anpi_json(s.value) AS doc,
    s.updated_at AS updated_at, l.key IS NOT NULL AS newest,
    COALESCE(substr(l.key, 8), m.room_id) AS room_id
FROM provider_state AS s
LEFT JOIN provider_state AS l
    ON l.provider = 'matrix' AND l.key LIKE 'latest:%' AND l.value = substr(s.key, 7)
LEFT JOIN matrix_rooms AS m ON m.user_id = pg_temp.anpi_json(s.value) ->> 'to'
WHERE s.provider = 'matrix' AND s.key LIKE 'event:%';
DELETE FROM old_checks WHERE jsonb_typeof(doc) IS DISTINCT FROM 'object'
    OR jsonb_typeof(doc -> 'rc') IS DISTINCT FROM 'number'
    OR (doc ->> 'rc') !~ '^-?[0-9]{1,18}$';
INSERT INTO matrix_checks (event_id, room_id, roll_call_id, to_user, answer_values, origin_ts,
    prev_event, sent_at)
SELECT event_id, room_id, (doc ->> 'rc')::bigint, doc ->> 'to',
    CASE WHEN jsonb_typeof(doc -> 'values') = 'array' THEN (doc -> 'values')::text
        ELSE '[]' END,
    CASE WHEN (doc ->> 'ts') ~ '^-?[0-9]{1,18}$' THEN (doc ->> 'ts')::bigint END,
    doc ->> 'prev',
    CASE WHEN newest OR doc ->> 'to' IS NOT NULL THEN updated_at END
FROM old_checks WHERE NOT newest ORDER BY updated_at, event_id
ON CONFLICT (event_id) DO NOTHING;
INSERT INTO matrix_checks (event_id, room_id, roll_call_id, to_user, answer_values, origin_ts,
    prev_event, sent_at)
SELECT event_id, room_id, (doc ->> 'rc')::bigint, doc ->> 'to',
    CASE WHEN jsonb_typeof(doc -> 'values') = 'array' THEN (doc -> 'values')::text
        ELSE '[]' END,
    CASE WHEN (doc ->> 'ts') ~ '^-?[0-9]{1,18}$' THEN (doc ->> 'ts')::bigint END,
    doc ->> 'prev', updated_at
FROM old_checks WHERE newest ORDER BY updated_at, event_id
ON CONFLICT (event_id) DO NOTHING;
DROP TABLE old_checks;
DROP FUNCTION pg_temp.anpi_json(TEXT);
DELETE FROM provider_state WHERE provider = 'matrix' AND (key LIKE 'room:%'
    OR key LIKE 'left:%' OR key LIKE 'event:%' OR key LIKE 'latest:%'
    OR key = 'encrypted_rooms');
