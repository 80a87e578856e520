-- The event log: append-only, partitioned by the aggregate's partition number.
CREATE TABLE {schema}.store_meta (
    key   text PRIMARY KEY,
    value text NOT NULL
);

CREATE SEQUENCE {schema}.events_position_seq AS bigint;

CREATE TABLE {schema}.events (
    global_position bigint      NOT NULL DEFAULT nextval('{schema}.events_position_seq'),
    -- The writing transaction's id: change-data-capture readers only take rows whose
    -- transaction is older than every running one, so a late commit is never skipped.
    tx_id           xid8        NOT NULL DEFAULT pg_current_xact_id(),
    partition       smallint    NOT NULL,
    event_id        uuid        NOT NULL,
    aggregate_type  text        NOT NULL,
    aggregate_id    text        NOT NULL,
    version         bigint      NOT NULL CHECK (version > 0),
    event_type      text        NOT NULL,
    schema_version  integer     NOT NULL,
    payload         jsonb       NOT NULL,
    metadata        jsonb       NOT NULL,
    recorded_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (partition, aggregate_type, aggregate_id, version),
    UNIQUE (partition, event_id)
) PARTITION BY LIST (partition);

CREATE INDEX events_log_order ON {schema}.events (tx_id, global_position);
CREATE INDEX events_stream_time ON {schema}.events (aggregate_type, aggregate_id, recorded_at);

-- History cannot be rewritten, not even with raw SQL.
CREATE FUNCTION {schema}.reject_event_mutation() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'nexus: events are immutable; % on % is not allowed', TG_OP, TG_TABLE_NAME
        USING HINT = 'append a compensating event instead';
END
$$;

CREATE TRIGGER events_immutable_rows BEFORE UPDATE OR DELETE ON {schema}.events
    FOR EACH ROW EXECUTE FUNCTION {schema}.reject_event_mutation();
CREATE TRIGGER events_immutable_truncate BEFORE TRUNCATE ON {schema}.events
    FOR EACH STATEMENT EXECUTE FUNCTION {schema}.reject_event_mutation();
