-- The search indexes cover searchable documents only, and are written in place.
-- Partial (`WHERE fields IS NOT NULL`, which every search statement states): the documents of
-- collections that are not searchable, every other projection's included, pay no GIN
-- maintenance when they are written (GIN indexes a NULL as an entry of its own).
-- `fastupdate = off`: with the pending list, every search scans it linearly and the commit that
-- fills it merges all of it into the index, a stall of the projection under steady writes; in
-- place, each commit pays for its own documents only.
DROP INDEX {schema}.documents_search;
DROP INDEX {schema}.documents_fields;
CREATE INDEX documents_search ON {schema}.documents USING gin (search)
    WITH (fastupdate = off) WHERE fields IS NOT NULL;
CREATE INDEX documents_fields ON {schema}.documents USING gin (fields jsonb_path_ops)
    WITH (fastupdate = off) WHERE fields IS NOT NULL;
