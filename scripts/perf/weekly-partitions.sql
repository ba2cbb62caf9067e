-- An experiment, not a migration: the same rows of a prefilled `events` in weekly partitions
-- (Monday to Monday) instead of daily ones, with the same keys, indexes and type estimate, to
-- measure what fewer partitions per statement would give the read path (docs/benchmarks.md,
-- tenth round). The daily table is kept as events_daily; swap the names back to compare.
--
--   scripts/perf/query-cost --rows 10000000 --keep      (the daily layout, and keeps the table)
--   psql postgres://postgres@127.0.0.1:5432/warren_query_cost -v ON_ERROR_STOP=1 \
--        -f scripts/perf/weekly-partitions.sql
--   scripts/perf/query-cost --rows 10000000 --keep      (the weekly layout)
SET maintenance_work_mem = '512MB';
CREATE TABLE events_weekly (LIKE events INCLUDING DEFAULTS INCLUDING GENERATED INCLUDING IDENTITY) PARTITION BY RANGE (received_on);
DO $$
DECLARE monday date;
BEGIN
  FOR monday IN SELECT generate_series(date_trunc('week', (SELECT min(received_on) FROM events))::date,
                                       (SELECT max(received_on) FROM events) + 7, interval '7 days')::date LOOP
    EXECUTE format('CREATE TABLE %I PARTITION OF events_weekly FOR VALUES FROM (%L) TO (%L)',
                   'events_w' || to_char(monday, 'YYYYMMDD'), monday, monday + 7);
  END LOOP;
END $$;
INSERT INTO events_weekly (seq, specversion, id, source, type, subject, time, datacontenttype, dataschema, data, data_base64, extensions, request_id, received_at, stored_at, received_on, source_id, type_id)
OVERRIDING SYSTEM VALUE
SELECT seq, specversion, id, source, type, subject, time, datacontenttype, dataschema, data, data_base64, extensions, request_id, received_at, stored_at, received_on, source_id, type_id FROM events;
ALTER TABLE events_weekly ADD PRIMARY KEY (seq, received_on);
ALTER TABLE events_weekly ADD UNIQUE (source_id, id, received_on);
CREATE INDEX ON events_weekly (event_time DESC, seq DESC);
CREATE INDEX ON events_weekly (type_id, event_time DESC, seq DESC);
CREATE INDEX ON events_weekly (subject, event_time DESC, seq DESC) WHERE subject IS NOT NULL;
CREATE INDEX ON events_weekly (source_id, type_id, event_time DESC, seq DESC);
ALTER TABLE events_weekly ALTER COLUMN type_id SET (n_distinct = 100000);
DO $$ DECLARE p regclass; BEGIN
  FOR p IN SELECT inhrelid::regclass FROM pg_inherits WHERE inhparent = 'events_weekly'::regclass LOOP
    EXECUTE format('ALTER TABLE %s ALTER COLUMN type_id SET (n_distinct = 100000)', p);
  END LOOP; END $$;
ALTER TABLE events RENAME TO events_daily;
ALTER TABLE events_weekly RENAME TO events;
-- Partition upkeep in this experiment: a day a weekly partition covers needs nothing.
CREATE OR REPLACE FUNCTION warren_events_partition(day date) RETURNS text LANGUAGE plpgsql AS $f$
BEGIN RETURN 'events_w' || to_char(date_trunc('week', day), 'YYYYMMDD'); END $f$;
SELECT setval(pg_get_serial_sequence('events', 'seq'), (SELECT max(seq) FROM events));
VACUUM ANALYZE events;
