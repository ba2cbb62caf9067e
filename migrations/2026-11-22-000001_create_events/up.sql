-- One row per CloudEvent, deduplicated on its key (source, id).
-- Text attributes use the "C" collation so prefix filters (type LIKE 'page.%') use the btree indexes.
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
    -- The time queries filter and sort on: the event's own time, else when Warren received it.
    event_time       timestamptz GENERATED ALWAYS AS (coalesce(time, received_at)) STORED,
    CONSTRAINT events_source_id_key UNIQUE (source, id),
    CONSTRAINT events_one_payload CHECK (data IS NULL OR data_base64 IS NULL)
);

-- Newest first with seq as the tie-breaker: every list query is an index range scan.
CREATE INDEX events_time_idx ON events (event_time DESC, seq DESC);
CREATE INDEX events_type_time_idx ON events (type, event_time DESC, seq DESC);
CREATE INDEX events_subject_time_idx ON events (subject, event_time DESC, seq DESC) WHERE subject IS NOT NULL;
CREATE INDEX events_source_time_idx ON events (source, event_time DESC, seq DESC);
