-- Security tokens' rows are not for every reader. A token's stored value holds the SHA-256
-- digest of its secret, and SNWS2 verification keys the HMAC with that digest (the secret is
-- never stored, processors/tokens.py): whoever reads the digest can sign as the token. So
-- rows of the `security_token` entity (its versions, and the events that made them in the
-- transactions, refused ones included) are hidden from pipeline_reader by row-level security;
-- pipeline_token_reader (the HTTP API, which verifies signatures) and pipeline_writer (which
-- may write tokens anyway) see every row. The tables' owner (the workers and the CLI, which
-- migrate) is not subject to row-level security. Idempotent: safe to re-run by hand.
DO $$
BEGIN
    BEGIN
        CREATE ROLE pipeline_token_reader NOLOGIN;
    EXCEPTION WHEN duplicate_object OR unique_violation THEN
        NULL;  -- exists already, or another session just created it
    END;
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO pipeline_token_reader', current_database());
END
$$;

GRANT USAGE ON SCHEMA history TO pipeline_token_reader;
GRANT SELECT ON ALL TABLES IN SCHEMA history TO pipeline_token_reader;
ALTER DEFAULT PRIVILEGES IN SCHEMA history GRANT SELECT ON TABLES TO pipeline_token_reader;

-- Every table that holds an entity's rows. With row-level security on, a role sees only the
-- rows some policy of its own (or of a role it is a member of) lets it see.
ALTER TABLE history.transactions ENABLE ROW LEVEL SECURITY;
ALTER TABLE history.versions ENABLE ROW LEVEL SECURITY;
ALTER TABLE history.valid_versions ENABLE ROW LEVEL SECURITY;
ALTER TABLE history.master_data ENABLE ROW LEVEL SECURITY;

DROP POLICY IF EXISTS reader_not_tokens ON history.transactions;
DROP POLICY IF EXISTS reader_not_tokens ON history.versions;
DROP POLICY IF EXISTS reader_not_tokens ON history.valid_versions;
DROP POLICY IF EXISTS reader_not_tokens ON history.master_data;
CREATE POLICY reader_not_tokens ON history.transactions FOR SELECT TO pipeline_reader
    USING (entity <> 'security_token');
CREATE POLICY reader_not_tokens ON history.versions FOR SELECT TO pipeline_reader
    USING (entity <> 'security_token');
CREATE POLICY reader_not_tokens ON history.valid_versions FOR SELECT TO pipeline_reader
    USING (entity <> 'security_token');
CREATE POLICY reader_not_tokens ON history.master_data FOR SELECT TO pipeline_reader
    USING (entity <> 'security_token');

DROP POLICY IF EXISTS token_reader_all ON history.transactions;
DROP POLICY IF EXISTS token_reader_all ON history.versions;
DROP POLICY IF EXISTS token_reader_all ON history.valid_versions;
DROP POLICY IF EXISTS token_reader_all ON history.master_data;
CREATE POLICY token_reader_all ON history.transactions FOR SELECT TO pipeline_token_reader USING (true);
CREATE POLICY token_reader_all ON history.versions FOR SELECT TO pipeline_token_reader USING (true);
CREATE POLICY token_reader_all ON history.valid_versions FOR SELECT TO pipeline_token_reader USING (true);
CREATE POLICY token_reader_all ON history.master_data FOR SELECT TO pipeline_token_reader USING (true);

-- The writer's rights are its grants (0002_roles.sql); row-level security changes nothing for it.
DROP POLICY IF EXISTS writer_all ON history.transactions;
DROP POLICY IF EXISTS writer_all ON history.versions;
DROP POLICY IF EXISTS writer_all ON history.valid_versions;
DROP POLICY IF EXISTS writer_all ON history.master_data;
CREATE POLICY writer_all ON history.transactions TO pipeline_writer USING (true) WITH CHECK (true);
CREATE POLICY writer_all ON history.versions TO pipeline_writer USING (true) WITH CHECK (true);
CREATE POLICY writer_all ON history.valid_versions TO pipeline_writer USING (true) WITH CHECK (true);
CREATE POLICY writer_all ON history.master_data TO pipeline_writer USING (true) WITH CHECK (true);
