-- Projections' read models: one set of tables shared by every projection, keyed by its name.
-- Ids and collections use the "C" collation so pages are ordered by bytes, as in SQLite,
-- and the primary key serves that order.
CREATE TABLE {schema}.documents (
    projection text COLLATE "C" NOT NULL,
    collection text COLLATE "C" NOT NULL,
    id         text COLLATE "C" NOT NULL,
    body       jsonb            NOT NULL,
    position   bigint           NOT NULL,
    updated_at timestamptz      NOT NULL,
    PRIMARY KEY (projection, collection, id)
);

CREATE TABLE {schema}.stream_versions (
    projection     text   NOT NULL,
    aggregate_type text   NOT NULL,
    aggregate_id   text   NOT NULL,
    version        bigint NOT NULL,
    PRIMARY KEY (projection, aggregate_type, aggregate_id)
);

CREATE TABLE {schema}.checkpoints (
    projection text   PRIMARY KEY,
    commit_key bigint NOT NULL,
    position   bigint NOT NULL
);

CREATE TABLE {schema}.dead_letters (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    projection      text        NOT NULL,
    event_id        text        NOT NULL,
    aggregate_type  text        NOT NULL,
    aggregate_id    text        NOT NULL,
    version         bigint      NOT NULL,
    position        bigint      NOT NULL,
    event_type      text        NOT NULL,
    envelope        text        NOT NULL,
    error           text        NOT NULL,
    attempts        integer     NOT NULL,
    first_failed_at timestamptz NOT NULL,
    last_failed_at  timestamptz NOT NULL,
    status          text        NOT NULL CHECK (status IN ('dead', 'parked', 'redrive'))
);

CREATE INDEX dead_letters_queue ON {schema}.dead_letters (projection, status, position);
CREATE INDEX dead_letters_stream ON {schema}.dead_letters (projection, aggregate_type, aggregate_id);
