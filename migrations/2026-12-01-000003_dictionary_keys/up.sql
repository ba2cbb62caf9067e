-- Integer keys for `source` and `type` (issue #25). Every stored row enters three indexes that
-- began with these text columns: the storage key (source, id, received_on), (type, event_time,
-- seq) and (source, type, event_time, seq). Comparing variable-width text was about a fifth of
-- PostgreSQL's time per row (docs/benchmarks.md, sixth and seventh rounds); fixed-width integer
-- ids in their place cost about 16% less per stored row.
--
-- The dictionaries map each text to a small integer that never changes and is never reused (rows
-- are never deleted from them, also when retention drops the last events of a type). The rows
-- keep their text columns, so reads return them without a join; only the indexes and the
-- filters use the ids. Writers pass the ids (the consumer caches them, consumer/src/write/
-- key_ids.rs); warren_source_id / warren_type_id give the id of a text, adding it when new,
-- for the consumer's cache misses and for scripts. There are no foreign keys from events to the
-- dictionaries: a check per stored row is what this change removes.
--
-- Existing rows are converted in place (every row is rewritten once, and the two indexes and
-- the storage key are rebuilt): on a large table this takes a while and holds the table; run
-- `consumer migrate` before starting consumers.

CREATE TABLE event_sources (
    id     integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    source text COLLATE "C" NOT NULL UNIQUE
);

CREATE TABLE event_types (
    id   integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    type text COLLATE "C" NOT NULL UNIQUE
);

-- The id of `name`, added when new. Safe when several writers add the same name at once: the
-- loser of the insert waits for the winner's commit and then reads its row. Call it outside a
-- transaction that may roll back, or the id handed out may vanish with it.
CREATE FUNCTION warren_source_id(name text) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    found integer;
BEGIN
    SELECT id INTO found FROM event_sources WHERE source = name;
    IF found IS NULL THEN
        INSERT INTO event_sources (source) VALUES (name) ON CONFLICT (source) DO NOTHING
        RETURNING id INTO found;
        IF found IS NULL THEN
            SELECT id INTO found FROM event_sources WHERE source = name;
        END IF;
    END IF;
    RETURN found;
END
$$;

CREATE FUNCTION warren_type_id(name text) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    found integer;
BEGIN
    SELECT id INTO found FROM event_types WHERE type = name;
    IF found IS NULL THEN
        INSERT INTO event_types (type) VALUES (name) ON CONFLICT (type) DO NOTHING
        RETURNING id INTO found;
        IF found IS NULL THEN
            SELECT id INTO found FROM event_types WHERE type = name;
        END IF;
    END IF;
    RETURN found;
END
$$;

INSERT INTO event_sources (source) SELECT DISTINCT source FROM events ORDER BY 1;
INSERT INTO event_types (type) SELECT DISTINCT type FROM events ORDER BY 1;

ALTER TABLE events ADD COLUMN source_id integer, ADD COLUMN type_id integer;
UPDATE events
SET source_id = event_sources.id, type_id = event_types.id
FROM event_sources, event_types
WHERE event_sources.source = events.source AND event_types.type = events.type;
ALTER TABLE events ALTER COLUMN source_id SET NOT NULL, ALTER COLUMN type_id SET NOT NULL;

ALTER TABLE events DROP CONSTRAINT events_source_id_key;
ALTER TABLE events ADD CONSTRAINT events_source_id_key UNIQUE (source_id, id, received_on);
DROP INDEX events_type_time_idx, events_source_type_time_idx;
CREATE INDEX events_type_time_idx ON events (type_id, event_time DESC, seq DESC);
CREATE INDEX events_source_type_time_idx ON events (source_id, type_id, event_time DESC, seq DESC);

-- The generic plans' estimate for one type (migration 2026-12-01-000001) now belongs to the
-- column the type index starts with.
DO $$
DECLARE
    partition regclass;
BEGIN
    FOR partition IN SELECT inhrelid::regclass FROM pg_inherits WHERE inhparent = 'events'::regclass LOOP
        EXECUTE format('ALTER TABLE %s ALTER COLUMN type_id SET (n_distinct = 100000)', partition);
    END LOOP;
END
$$;
ALTER TABLE events ALTER COLUMN type_id SET (n_distinct = 100000);

CREATE OR REPLACE FUNCTION warren_events_partition(day date) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    name text := 'events_p' || to_char(day, 'YYYYMMDD');
BEGIN
    -- Serialise creators of the same day; the lock ends with the calling transaction.
    PERFORM pg_advisory_xact_lock(2003, (day - date '2000-01-01'));
    IF to_regclass(name) IS NULL THEN
        EXECUTE format('CREATE TABLE %I PARTITION OF events FOR VALUES FROM (%L) TO (%L)',
                       name, day, day + 1);
        EXECUTE format('ALTER TABLE %I ALTER COLUMN type SET (n_distinct = 100000)', name);
        EXECUTE format('ALTER TABLE %I ALTER COLUMN type_id SET (n_distinct = 100000)', name);
    END IF;
    RETURN name;
END
$$;

ANALYZE events;
