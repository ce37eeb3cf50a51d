"""The processes' link to the metadata history log in PostgreSQL: applying events and loading the
validators' catalog (`link`), a view that follows the log (`view`), and events made from files
(`events`). The rules are processors/metadata.py; the SQL is sinks/history.py."""
