"""The HTTP API (`pipeline api`): one server (`server`) for the OpenOrg time-series API, the
SolarQuery API (`solarquery`) and HTTP ingest (`http_ingest`), with SNWS2 access checks (`access`)."""
