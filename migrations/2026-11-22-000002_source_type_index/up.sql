-- Lists filtered on a source and a type (the common "this app's checkout events") read one index
-- range; a source alone, or a source and a type prefix, merge each of the source's types from this
-- index (consumer/src/query/mod.rs). It replaces (source, event_time, seq): still six indexes for
-- the write path to maintain.
-- On a large table, build it first without blocking writes, and this migration keeps it:
--   CREATE INDEX CONCURRENTLY events_source_type_time_idx ON events (source, type, event_time DESC, seq DESC);
CREATE INDEX IF NOT EXISTS events_source_type_time_idx ON events (source, type, event_time DESC, seq DESC);
DROP INDEX IF EXISTS events_source_time_idx;
