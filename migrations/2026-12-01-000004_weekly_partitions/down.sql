-- Back to daily partitions: every weekly partition is detached, its rows copied into the daily
-- partitions of their days (with their seq values), and the weekly table dropped.

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

DO $$
DECLARE
    weekly record;
    day date;
BEGIN
    CREATE TEMPORARY TABLE warren_weekly_partitions (name text, monday date) ON COMMIT DROP;
    INSERT INTO warren_weekly_partitions
    SELECT c.relname, to_date(substr(c.relname, 9), 'YYYYMMDD')
    FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
    WHERE i.inhparent = 'events'::regclass AND c.relname ~ '^events_w[0-9]{8}$';
    FOR weekly IN SELECT * FROM warren_weekly_partitions ORDER BY monday LOOP
        EXECUTE format('ALTER TABLE events DETACH PARTITION %I', weekly.name);
    END LOOP;
    FOR weekly IN SELECT * FROM warren_weekly_partitions ORDER BY monday LOOP
        FOR day IN SELECT generate_series(weekly.monday, weekly.monday + 6, interval '1 day')::date LOOP
            PERFORM warren_events_partition(day);
        END LOOP;
        EXECUTE format(
            'INSERT INTO events (seq, specversion, id, source, type, subject, time, datacontenttype, '
            'dataschema, data, data_base64, extensions, request_id, received_at, stored_at, '
            'received_on, source_id, type_id) OVERRIDING SYSTEM VALUE '
            'SELECT seq, specversion, id, source, type, subject, time, datacontenttype, '
            'dataschema, data, data_base64, extensions, request_id, received_at, stored_at, '
            'received_on, source_id, type_id FROM %I', weekly.name);
        EXECUTE format('DROP TABLE %I', weekly.name);
    END LOOP;
END
$$;

ANALYZE events;
