"""The embedded default's services, started and supervised by `pipeline up`: the Tansu broker,
embedded PostgreSQL and the chDB endpoint (`stack`), and ClickHouse's HTTP interface over chDB
(`chserver`). Nothing outside this package and the launcher knows the services are embedded."""
