-- Subscriptions (the CloudEvents Subscriptions API) and what delivering to them needs to keep:
-- retries waiting for their time, dead letters, replay jobs. Live deliveries come from each
-- subscription's own RabbitMQ queue; only what failed or waits is written here.
CREATE TABLE subscriptions (
    id                   uuid PRIMARY KEY,
    sink                 text NOT NULL,
    -- The request as the subscriber gave it: filters, protocol settings, delivery limits.
    filters              jsonb NOT NULL DEFAULT '[]',
    types                text[],
    source               text,
    protocol_settings    jsonb NOT NULL DEFAULT '{}',
    delivery             jsonb NOT NULL,
    format               text NOT NULL CHECK (format IN ('binary', 'structured')),
    -- Fixed at creation: an ordered subscription's queue has a single active consumer.
    ordering             text NOT NULL DEFAULT 'none' CHECK (ordering IN ('none', 'subject', 'source')),
    -- Signing secrets, encrypted when the operator configured a key (see secret.rs).
    secret               bytea NOT NULL,
    previous_secret      bytea,
    previous_secret_until timestamptz,
    status               text NOT NULL CHECK (status IN ('active', 'paused')),
    status_reason        text,
    -- Set at the first failed attempt after a success; the workers pause a subscription whose
    -- sink has failed for longer than WARREN_DELIVERY_PAUSE_AFTER_SECS.
    failing_since        timestamptz,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now()
);

-- A delivery that failed and waits for its next attempt. A worker claims due rows by moving
-- due_at forward by a lease, so a worker killed mid-attempt leaves the row to be retried.
CREATE TABLE delivery_retries (
    seq              bigserial PRIMARY KEY,
    subscription_id  uuid NOT NULL REFERENCES subscriptions (id) ON DELETE CASCADE,
    event            jsonb NOT NULL,
    received_at      timestamptz NOT NULL,
    attempts         integer NOT NULL CHECK (attempts >= 0),
    due_at           timestamptz NOT NULL,
    last_status      integer,
    last_error       text,
    replay           boolean NOT NULL DEFAULT false,
    -- For ordered subscriptions, the event's key: only the oldest row of a key is attempted, so
    -- a failing event holds back the later events of its key and no other.
    ordering_key     text
);
CREATE INDEX delivery_retries_due ON delivery_retries (due_at);
CREATE INDEX delivery_retries_key ON delivery_retries (subscription_id, ordering_key, seq)
    WHERE ordering_key IS NOT NULL;
CREATE INDEX delivery_retries_subscription ON delivery_retries (subscription_id);

-- Deliveries that failed past the subscription's limits, kept until re-sent or deleted.
CREATE TABLE delivery_dead_letters (
    seq              bigserial PRIMARY KEY,
    subscription_id  uuid NOT NULL REFERENCES subscriptions (id) ON DELETE CASCADE,
    event            jsonb NOT NULL,
    received_at      timestamptz NOT NULL,
    attempts         integer NOT NULL,
    last_status      integer,
    last_error       text,
    ordering_key     text,
    dead_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX delivery_dead_letters_subscription ON delivery_dead_letters (subscription_id, seq);

-- Replays of stored events to one subscription: a worker claims a job with a lease and walks
-- the events received between since and until, keeping its place in cursor_*.
CREATE TABLE delivery_replays (
    id               uuid PRIMARY KEY,
    subscription_id  uuid NOT NULL REFERENCES subscriptions (id) ON DELETE CASCADE,
    since            timestamptz NOT NULL,
    until            timestamptz NOT NULL,
    cursor_received_at timestamptz,
    cursor_seq       bigint,
    delivered        bigint NOT NULL DEFAULT 0,
    status           text NOT NULL CHECK (status IN ('running', 'done')),
    lease_until      timestamptz NOT NULL DEFAULT now(),
    created_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz
);
CREATE INDEX delivery_replays_running ON delivery_replays (lease_until) WHERE status = 'running';
