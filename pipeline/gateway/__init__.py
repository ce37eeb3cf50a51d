"""The sending side: files of datums to their topics (`ingest`), stored or dead-lettered datums
sent again (`replay`), a simulated fleet (`simulate`), set operations to devices (`commands`) and
what a send will store already expired (`expiry`)."""
