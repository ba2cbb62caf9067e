-- Events are partitioned by the UTC day the gateway received them (received_on), so retention
-- (WARREN_RETENTION_DAYS) drops whole partitions instead of deleting rows, and each day's indexes
-- stay the size of one day.
--
-- A unique constraint on a partitioned table must contain the partition key, so the storage key
-- is (source, id, received_on). received_on comes from the envelope's received_at, which a
-- redelivery carries unchanged: a redelivered message always lands in its original partition and
-- is deduplicated there. A client retry is a new request with a new received_at; the insert also
-- looks for the key in the previous day's partition (consumer/src/store.rs), so a retry that
-- crosses midnight is deduplicated too. Only a retry received more than a calendar day after the
-- stored original can be stored a second time (docs/guarantees.md).
--
-- An existing table is converted in place: its rows are copied into daily partitions (with their
-- seq values) and the old table is dropped. On a large table this takes a while and holds the
-- table; run `consumer migrate` before starting consumers.

ALTER TABLE events RENAME TO events_unpartitioned;
ALTER TABLE events_unpartitioned RENAME CONSTRAINT events_source_id_key TO events_unpartitioned_source_id_key;
ALTER TABLE events_unpartitioned RENAME CONSTRAINT events_pkey TO events_unpartitioned_pkey;
ALTER TABLE events_unpartitioned RENAME CONSTRAINT events_one_payload TO events_unpartitioned_one_payload;
ALTER INDEX events_time_idx RENAME TO events_unpartitioned_time_idx;
ALTER INDEX events_type_time_idx RENAME TO events_unpartitioned_type_time_idx;
ALTER INDEX events_subject_time_idx RENAME TO events_unpartitioned_subject_time_idx;
ALTER INDEX events_source_type_time_idx RENAME TO events_unpartitioned_source_type_time_idx;
ALTER SEQUENCE events_seq_seq RENAME TO events_unpartitioned_seq_seq;

CREATE TABLE events (
    seq              bigint GENERATED ALWAYS AS IDENTITY,
    specversion      text COLLATE "C" NOT NULL DEFAULT '1.0',
    id               text COLLATE "C" NOT NULL,
    source           text COLLATE "C" NOT NULL,
    type             text COLLATE "C" NOT NULL,
    subject          text COLLATE "C",
    time             timestamptz,
    datacontenttype  text,
    dataschema       text,
    data             jsonb,
    data_base64      text,
    extensions       jsonb NOT NULL DEFAULT '{}'::jsonb,
    request_id       text,
    received_at      timestamptz NOT NULL,
    stored_at        timestamptz NOT NULL DEFAULT clock_timestamp(),
    event_time       timestamptz GENERATED ALWAYS AS (coalesce(time, received_at)) STORED,
    -- The UTC day of received_at: the partition key. Supplied by the writer, checked here.
    received_on      date NOT NULL,
    CONSTRAINT events_pkey PRIMARY KEY (seq, received_on),
    CONSTRAINT events_source_id_key UNIQUE (source, id, received_on),
    CONSTRAINT events_one_payload CHECK (data IS NULL OR data_base64 IS NULL),
    CONSTRAINT events_received_on_matches CHECK (received_on = (received_at AT TIME ZONE 'UTC')::date)
) PARTITION BY RANGE (received_on);

CREATE INDEX events_time_idx ON events (event_time DESC, seq DESC);
CREATE INDEX events_type_time_idx ON events (type, event_time DESC, seq DESC);
CREATE INDEX events_subject_time_idx ON events (subject, event_time DESC, seq DESC) WHERE subject IS NOT NULL;
CREATE INDEX events_source_type_time_idx ON events (source, type, event_time DESC, seq DESC);

-- The one way partitions are made (by the consumer ahead of time, by a write that finds its day
-- missing, by scripts): idempotent, and safe when several consumers call it at once.
CREATE FUNCTION warren_events_partition(day date) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    name text := 'events_p' || to_char(day, 'YYYYMMDD');
BEGIN
    -- Serialise creators of the same day; the lock ends with the calling transaction.
    PERFORM pg_advisory_xact_lock(2003, (day - date '2000-01-01'));
    IF to_regclass(name) IS NULL THEN
        EXECUTE format('CREATE TABLE %I PARTITION OF events FOR VALUES FROM (%L) TO (%L)',
                       name, day, day + 1);
    END IF;
    RETURN name;
END
$$;

SELECT warren_events_partition(day::date)
FROM (SELECT DISTINCT (received_at AT TIME ZONE 'UTC')::date AS day FROM events_unpartitioned) AS days;

INSERT INTO events (seq, specversion, id, source, type, subject, time, datacontenttype, dataschema,
                    data, data_base64, extensions, request_id, received_at, stored_at, received_on)
OVERRIDING SYSTEM VALUE
SELECT seq, specversion, id, source, type, subject, time, datacontenttype, dataschema,
       data, data_base64, extensions, request_id, received_at, stored_at,
       (received_at AT TIME ZONE 'UTC')::date
FROM events_unpartitioned;

SELECT setval(pg_get_serial_sequence('events', 'seq'),
              greatest((SELECT max(seq) FROM events_unpartitioned), 1));

DROP TABLE events_unpartitioned;
