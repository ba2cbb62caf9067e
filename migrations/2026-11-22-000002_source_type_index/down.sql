CREATE INDEX IF NOT EXISTS events_source_time_idx ON events (source, event_time DESC, seq DESC);
DROP INDEX IF EXISTS events_source_type_time_idx;
