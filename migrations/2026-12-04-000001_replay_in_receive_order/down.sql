-- Back to replay in seq order through the (seq, received_on) primary key. Running replays start
-- again from their `since`.
DROP INDEX events_received_at_brin;
ALTER TABLE events ADD CONSTRAINT events_pkey PRIMARY KEY (seq, received_on);
UPDATE delivery_replays SET cursor_seq = NULL, cursor_received_at = NULL WHERE status = 'running';
