-- The read API's list statements run as generic plans (planned once per connection, see
-- consumer/src/db/mod.rs): planning one for its values walks every daily partition with its six
-- indexes and cost ten times the execution. A generic plan cannot see which type is asked for,
-- so it estimates `type = $1` as one type among those ANALYZE counted; with a few dozen types
-- that looks common enough to walk the time index and filter by type, which reads a day of other
-- events when the type is rare (seen: 150–209 ms instead of 1 ms). The (type, event_time, seq)
-- index answers `type = X ... ORDER BY event_time DESC LIMIT n` exactly, whatever X is, so tell
-- the planner to treat any one type as rare. Plans for a known common value still read its
-- frequency from the statistics (most-common values); only the unknown-value estimate changes.
-- Attribute options are per table and partitions do not inherit them: set on every partition
-- that exists and, in warren_events_partition, on every one made later.

DO $$
DECLARE
    partition regclass;
BEGIN
    FOR partition IN SELECT inhrelid::regclass FROM pg_inherits WHERE inhparent = 'events'::regclass LOOP
        EXECUTE format('ALTER TABLE %s ALTER COLUMN type SET (n_distinct = 100000)', partition);
    END LOOP;
END
$$;
ALTER TABLE events ALTER COLUMN type SET (n_distinct = 100000);

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
    END IF;
    RETURN name;
END
$$;

-- The new estimate takes effect when a partition is next analyzed; do it now.
ANALYZE events;
