-- Full-text search of PostgreSQL read models, maintained from each collection's search
-- declaration by the commit that writes the document (so a write is searchable once it is
-- committed). `search` holds the declared full-text fields, each weighted by its place in the
-- declaration (A to D, which a field-scoped query names), parsed with the field's text search
-- configuration; `fields` holds the declared keyword, numeric, date and boolean values as
-- `{"path": [values]}` (dates as epoch microseconds), read by filters, sorts and aggregations.
-- Both stay NULL for documents of collections that are not searchable.
ALTER TABLE {schema}.documents ADD COLUMN search tsvector, ADD COLUMN fields jsonb;

CREATE INDEX documents_search ON {schema}.documents USING gin (search);
CREATE INDEX documents_fields ON {schema}.documents USING gin (fields jsonb_path_ops);

-- The declaration each collection's `search` and `fields` were computed from; a start with
-- another declaration recomputes them for every document of the collection, then records it.
CREATE TABLE {schema}.search_declarations (
    projection  text NOT NULL,
    collection  text NOT NULL,
    fingerprint text NOT NULL,
    PRIMARY KEY (projection, collection)
);
