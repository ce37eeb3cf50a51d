-- Roles: pipeline_reader (SELECT only) and pipeline_writer (append to the log, close
-- versions). Roles are cluster-wide and several databases may migrate at once, so creation
-- tolerates a role that exists or is being created concurrently. Both are NOLOGIN group roles:
-- grant them to login users (CREATE ROLE app LOGIN PASSWORD '...' IN ROLE pipeline_writer).
DO $$
BEGIN
    BEGIN
        CREATE ROLE pipeline_reader NOLOGIN;
    EXCEPTION WHEN duplicate_object OR unique_violation THEN
        NULL;  -- exists already, or another session just created it
    END;
    BEGIN
        CREATE ROLE pipeline_writer NOLOGIN;
    EXCEPTION WHEN duplicate_object OR unique_violation THEN
        NULL;
    END;
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO pipeline_reader, pipeline_writer',
                   current_database());
END
$$;

GRANT USAGE ON SCHEMA history TO pipeline_reader, pipeline_writer;
GRANT SELECT ON ALL TABLES IN SCHEMA history TO pipeline_reader, pipeline_writer;

-- The writer appends; history rows are never deleted, only closed (tx upper bound set).
GRANT INSERT ON history.transactions, history.versions, history.valid_versions,
    history.master_data TO pipeline_writer;
GRANT UPDATE (status, changed, rule, reason) ON history.transactions TO pipeline_writer;
GRANT UPDATE (tx, ended_tx) ON history.versions, history.valid_versions TO pipeline_writer;
GRANT UPDATE, DELETE ON history.master_data TO pipeline_writer;  -- master data: no history
GRANT USAGE ON ALL SEQUENCES IN SCHEMA history TO pipeline_writer;

-- Tables added by later migrations stay readable by the reader.
ALTER DEFAULT PRIVILEGES IN SCHEMA history GRANT SELECT ON TABLES TO pipeline_reader;
