CREATE OR REPLACE FUNCTION warren_events_partition(day date) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    name text := 'events_p' || to_char(day, 'YYYYMMDD');
BEGIN
    PERFORM pg_advisory_xact_lock(2003, (day - date '2000-01-01'));
    IF to_regclass(name) IS NULL THEN
        EXECUTE format('CREATE TABLE %I PARTITION OF events FOR VALUES FROM (%L) TO (%L)',
                       name, day, day + 1);
        EXECUTE format('ALTER TABLE %I ALTER COLUMN type SET (n_distinct = 100000)', name);
    END IF;
    RETURN name;
END
$$;

ALTER TABLE events DROP CONSTRAINT events_source_id_key;
ALTER TABLE events ADD CONSTRAINT events_source_id_key UNIQUE (source, id, received_on);
DROP INDEX events_type_time_idx, events_source_type_time_idx;
CREATE INDEX events_type_time_idx ON events (type, event_time DESC, seq DESC);
CREATE INDEX events_source_type_time_idx ON events (source, type, event_time DESC, seq DESC);
ALTER TABLE events DROP COLUMN source_id, DROP COLUMN type_id;

DROP FUNCTION warren_source_id(text);
DROP FUNCTION warren_type_id(text);
DROP TABLE event_sources;
DROP TABLE event_types;
