-- The events table drops its (seq, received_on) primary key (issue #25). Only delivery replay
-- read it (ORDER BY seq within a receive window), and every stored row paid for it: one more
-- index entry, 0.7–2.9 µs of PostgreSQL's time and a sixth of the WAL bytes per row
-- (docs/benchmarks.md, thirty-seventh and thirty-ninth rounds).
--
-- Replay now walks its window in the order events were received, (received_at, seq), through a
-- BRIN index on received_at: rows are appended in about the order they are received, so each
-- block range's summary is narrow and a window reads only the ranges that hold it. An insert into
-- the last block range, which is not summarized yet, does not touch the index; autosummarize has
-- autovacuum summarize each range once it is full.
--
-- What stays: seq is still unique (an identity column that no statement overrides), the read
-- indexes' tie-breaker and the list API's cursor; the storage key (source_id, id, received_on)
-- is the table's unique constraint.
--
-- Replays running when this is applied start again from their `since` (their cursor was a seq):
-- events already replayed are delivered again, which at-least-once delivery allows and which a
-- sink deduplicates on the webhook-id.
ALTER TABLE events DROP CONSTRAINT events_pkey;
CREATE INDEX events_received_at_brin ON events USING brin (received_at)
    WITH (pages_per_range = 32, autosummarize = on);
UPDATE delivery_replays SET cursor_seq = NULL, cursor_received_at = NULL WHERE status = 'running';
