-- Login users of the compose stack's PostgreSQL (run once, when the data volume is first made).
-- The history log's migration (sinks/migrations/0002_roles.sql) grants the group roles their
-- rights: pipeline_reader reads the log but for security tokens' rows, pipeline_token_reader
-- reads those too (the HTTP API verifies signatures with them; 0004_token_rows.sql),
-- pipeline_writer appends to it. The workers and the CLI migrate and write as the owner,
-- `pipeline`. The API's password comes from POSTGRES_API_PASSWORD (docker-compose.yml).
CREATE ROLE pipeline_reader NOLOGIN;
CREATE ROLE pipeline_writer NOLOGIN;
CREATE ROLE pipeline_token_reader NOLOGIN;
\getenv api_password POSTGRES_API_PASSWORD
CREATE ROLE pipeline_api LOGIN PASSWORD :'api_password' IN ROLE pipeline_reader, pipeline_token_reader;
