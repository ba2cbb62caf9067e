DO $$
DECLARE
    partition regclass;
BEGIN
    FOR partition IN SELECT inhrelid::regclass FROM pg_inherits WHERE inhparent = 'events'::regclass LOOP
        EXECUTE format('ALTER TABLE %s ALTER COLUMN type RESET (n_distinct)', partition);
    END LOOP;
END
$$;
ALTER TABLE events ALTER COLUMN type RESET (n_distinct);

CREATE OR REPLACE FUNCTION warren_events_partition(day date) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    name text := 'events_p' || to_char(day, 'YYYYMMDD');
BEGIN
    PERFORM pg_advisory_xact_lock(2003, (day - date '2000-01-01'));
    IF to_regclass(name) IS NULL THEN
        EXECUTE format('CREATE TABLE %I PARTITION OF events FOR VALUES FROM (%L) TO (%L)',
                       name, day, day + 1);
    END IF;
    RETURN name;
END
$$;
