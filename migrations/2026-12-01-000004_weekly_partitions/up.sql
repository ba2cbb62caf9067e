-- Weekly partitions instead of daily ones (issue #23). A list query names no received day, so
-- each statement opens an index scan in every partition: with daily partitions a 30-day table
-- costs 30 of them per query, and that fixed cost was most of a query's CPU (docs/benchmarks.md,
-- tenth and fourteenth rounds). A partition now holds the events received (UTC) from a Monday to
-- the next Monday, named events_wYYYYMMDD after its Monday: a quarter as many partitions for a
-- month kept. TimescaleDB's default chunk is the same seven days.
--
-- What stays: the partition key is received_on (the UTC day), the storage key is (source_id, id,
-- received_on), and a client retry near midnight looks for its key under the neighbour day
-- (WARREN_DEDUP_RETRY_WINDOW_SECS), which the planner now finds in the same partition six days
-- in seven. What changes: retention (WARREN_RETENTION_DAYS) drops a week's partition once its
-- last day is past the window, so an event is kept at least the days asked for and at most six
-- days more (docs/guarantees.md).
--
-- Existing daily partitions are converted: all are detached, their rows copied into the weeks
-- that hold their days (with their seq values), and the daily tables dropped. On a large table
-- this takes a while and holds the table; run `consumer migrate` before starting consumers.

CREATE OR REPLACE FUNCTION warren_events_partition(day date) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    monday date := day - (extract(isodow FROM day)::integer - 1);
    name text := 'events_w' || to_char(monday, 'YYYYMMDD');
BEGIN
    -- Serialise creators of the same week; the lock ends with the calling transaction.
    PERFORM pg_advisory_xact_lock(2004, (monday - date '2000-01-01'));
    IF to_regclass(name) IS NULL THEN
        EXECUTE format('CREATE TABLE %I PARTITION OF events FOR VALUES FROM (%L) TO (%L)',
                       name, monday, monday + 7);
        EXECUTE format('ALTER TABLE %I ALTER COLUMN type SET (n_distinct = 100000)', name);
        EXECUTE format('ALTER TABLE %I ALTER COLUMN type_id SET (n_distinct = 100000)', name);
    END IF;
    RETURN name;
END
$$;

DO $$
DECLARE
    daily record;
BEGIN
    CREATE TEMPORARY TABLE warren_daily_partitions (name text, day date) ON COMMIT DROP;
    INSERT INTO warren_daily_partitions
    SELECT c.relname, to_date(substr(c.relname, 9), 'YYYYMMDD')
    FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
    WHERE i.inhparent = 'events'::regclass AND c.relname ~ '^events_p[0-9]{8}$';
    -- A week's partition would overlap its days' partitions: detach them all first.
    FOR daily IN SELECT * FROM warren_daily_partitions ORDER BY day LOOP
        EXECUTE format('ALTER TABLE events DETACH PARTITION %I', daily.name);
    END LOOP;
    FOR daily IN SELECT * FROM warren_daily_partitions ORDER BY day LOOP
        PERFORM warren_events_partition(daily.day);
        EXECUTE format(
            'INSERT INTO events (seq, specversion, id, source, type, subject, time, datacontenttype, '
            'dataschema, data, data_base64, extensions, request_id, received_at, stored_at, '
            'received_on, source_id, type_id) OVERRIDING SYSTEM VALUE '
            'SELECT seq, specversion, id, source, type, subject, time, datacontenttype, '
            'dataschema, data, data_base64, extensions, request_id, received_at, stored_at, '
            'received_on, source_id, type_id FROM %I', daily.name);
        EXECUTE format('DROP TABLE %I', daily.name);
    END LOOP;
END
$$;

ANALYZE events;
