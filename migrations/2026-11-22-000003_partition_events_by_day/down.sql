-- Back to one table; rows keep their seq. Where the same (source, id) was stored on two days
-- (a retry more than a day apart), the older row is kept.
ALTER TABLE events RENAME TO events_partitioned;
ALTER TABLE events_partitioned RENAME CONSTRAINT events_pkey TO events_partitioned_pkey;
ALTER TABLE events_partitioned RENAME CONSTRAINT events_source_id_key TO events_partitioned_source_id_key;
ALTER TABLE events_partitioned RENAME CONSTRAINT events_one_payload TO events_partitioned_one_payload;
ALTER INDEX events_time_idx RENAME TO events_partitioned_time_idx;
ALTER INDEX events_type_time_idx RENAME TO events_partitioned_type_time_idx;
ALTER INDEX events_subject_time_idx RENAME TO events_partitioned_subject_time_idx;
ALTER INDEX events_source_type_time_idx RENAME TO events_partitioned_source_type_time_idx;
ALTER SEQUENCE events_seq_seq RENAME TO events_partitioned_seq_seq;

CREATE TABLE events (
    seq              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
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
    CONSTRAINT events_source_id_key UNIQUE (source, id),
    CONSTRAINT events_one_payload CHECK (data IS NULL OR data_base64 IS NULL)
);
CREATE INDEX events_time_idx ON events (event_time DESC, seq DESC);
CREATE INDEX events_type_time_idx ON events (type, event_time DESC, seq DESC);
CREATE INDEX events_subject_time_idx ON events (subject, event_time DESC, seq DESC) WHERE subject IS NOT NULL;
CREATE INDEX events_source_type_time_idx ON events (source, type, event_time DESC, seq DESC);

INSERT INTO events (seq, specversion, id, source, type, subject, time, datacontenttype, dataschema,
                    data, data_base64, extensions, request_id, received_at, stored_at)
OVERRIDING SYSTEM VALUE
SELECT seq, specversion, id, source, type, subject, time, datacontenttype, dataschema,
       data, data_base64, extensions, request_id, received_at, stored_at
FROM events_partitioned
ORDER BY received_on
ON CONFLICT (source, id) DO NOTHING;

SELECT setval(pg_get_serial_sequence('events', 'seq'),
              greatest((SELECT max(seq) FROM events_partitioned), 1));

DROP TABLE events_partitioned;
DROP FUNCTION warren_events_partition(date);
