-- The schema registry: versions of a JSON Schema (2020-12) per CloudEvents type. Versions are
-- immutable once written; retiring one (DELETE) sets retired_at and keeps the row, so an event
-- stored under a retired version can still be explained. The newest version that is not retired
-- is the type's current schema, and its policy is the type's policy.
CREATE TABLE event_schemas (
    type        text COLLATE "C" NOT NULL,
    version     integer NOT NULL CHECK (version > 0),
    schema      jsonb NOT NULL,
    policy      text NOT NULL CHECK (policy IN ('enforce', 'warn')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    retired_at  timestamptz,
    PRIMARY KEY (type, version)
);
