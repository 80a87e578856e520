-- The audit log of read-model changes: one hash-chained sequence of entries per projection,
-- appended in the transaction that commits the documents. Entries are never updated; they are
-- deleted only by retention, which writes a permit row for the seqs it removes in its own
-- transaction (so no other transaction ever sees one) and records the removal in the chain.
CREATE TABLE {schema}.audit_log (
    projection     text COLLATE "C" NOT NULL,
    seq            bigint           NOT NULL,
    kind           text             NOT NULL CHECK (kind IN ('change', 'rebuild', 'prune')),
    collection     text COLLATE "C",
    id             text COLLATE "C",
    before         text,
    after          text,
    event_id       text,
    event_type     text,
    aggregate_type text,
    aggregate_id   text,
    version        bigint,
    position       bigint,
    correlation_id text,
    at             bigint           NOT NULL,
    detail         text,
    hash           bytea            NOT NULL,
    PRIMARY KEY (projection, seq)
);

CREATE INDEX audit_log_document ON {schema}.audit_log (projection, collection, id, seq)
    WHERE kind = 'change';
CREATE INDEX audit_log_marks ON {schema}.audit_log (projection, kind, seq) WHERE kind <> 'change';

-- The checkpoint each projection's log last saw: a run starting below it is a rebuild.
CREATE TABLE {schema}.audit_heads (
    projection text   PRIMARY KEY,
    checkpoint bigint NOT NULL
);

CREATE TABLE {schema}.audit_prune_permits (
    projection text   NOT NULL,
    upto       bigint NOT NULL
);

CREATE FUNCTION {schema}.guard_read_model_audit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_LEVEL = 'ROW' AND TG_OP = 'DELETE' THEN
        IF EXISTS (SELECT 1 FROM {schema}.audit_prune_permits p
                   WHERE p.projection = OLD.projection AND OLD.seq <= p.upto) THEN
            RETURN OLD;
        END IF;
    END IF;
    RAISE EXCEPTION 'nexus: the read-model audit log is append-only; % on % is not allowed', TG_OP, TG_TABLE_NAME
        USING HINT = 'old entries leave only through retention (nexus audit prune)';
END
$$;

CREATE TRIGGER audit_log_append_only_rows BEFORE UPDATE OR DELETE ON {schema}.audit_log
    FOR EACH ROW EXECUTE FUNCTION {schema}.guard_read_model_audit();
CREATE TRIGGER audit_log_append_only_truncate BEFORE TRUNCATE ON {schema}.audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION {schema}.guard_read_model_audit();
