-- Temporal queries: time to position, positions of one aggregate type, and a bounded history
-- of snapshots per stream so state-as-of starts from the nearest earlier one.
CREATE INDEX events_recorded_at ON {schema}.events (recorded_at, global_position);
CREATE INDEX events_type_position ON {schema}.events (aggregate_type, global_position);

CREATE TABLE {schema}.snapshot_history (
    aggregate_type text        NOT NULL,
    aggregate_id   text        NOT NULL,
    version        bigint      NOT NULL,
    schema_version integer     NOT NULL,
    state          text        NOT NULL,
    taken_at       timestamptz NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id, version)
);
