-- Snapshots live in their own tables, never in the event log.
CREATE TABLE {schema}.snapshots (
    aggregate_type text        NOT NULL,
    aggregate_id   text        NOT NULL,
    version        bigint      NOT NULL,
    schema_version integer     NOT NULL,
    state          text        NOT NULL,
    taken_at       timestamptz NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id)
);

CREATE TABLE {schema}.snapshot_checkpoints (
    name       text   PRIMARY KEY,
    commit_key bigint NOT NULL,
    position   bigint NOT NULL
);
