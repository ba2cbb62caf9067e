//! The `events` table as diesel sees it (see `migrations/`).

diesel::table! {
    /// One row per CloudEvent; UNIQUE (source_id, id, received_on), partitioned by `received_on`
    /// (the UTC day of `received_at`). Reads never need that column, nor the integer ids of
    /// `source` and `type` (the indexes use them; filters name them in SQL), and writes are plain
    /// SQL (`write/store.rs`), so they are left out here. diesel's key is `seq`: unique as an
    /// identity column, though no constraint holds it since the storage key is the only one.
    events (seq) {
        /// Insertion order; the stable tie-breaker for pagination.
        seq -> Int8,
        /// Always "1.0".
        specversion -> Text,
        /// CloudEvents id.
        id -> Text,
        /// CloudEvents source.
        source -> Text,
        /// CloudEvents type.
        #[sql_name = "type"]
        event_type -> Text,
        /// CloudEvents subject.
        subject -> Nullable<Text>,
        /// CloudEvents time.
        time -> Nullable<Timestamptz>,
        /// Media type of data.
        datacontenttype -> Nullable<Text>,
        /// Schema URI of data.
        dataschema -> Nullable<Text>,
        /// JSON payload.
        data -> Nullable<Jsonb>,
        /// Binary payload as base64.
        data_base64 -> Nullable<Text>,
        /// Extension attributes.
        extensions -> Jsonb,
        /// The gateway request that carried the event.
        request_id -> Nullable<Text>,
        /// When the gateway accepted it.
        received_at -> Timestamptz,
        /// When it was written.
        stored_at -> Timestamptz,
        /// `time`, or `received_at` when the event had none.
        event_time -> Timestamptz,
    }
}
