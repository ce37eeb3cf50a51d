"""The Faust worker (`pipeline worker`): agents that decode, check, store and roll up datum batches
(`app`), the order of commitment of a batch (`commit`), the rollup maintainer (`rollups`), the
faust-streaming workarounds (`faust_fixes`) and the Prometheus metrics (`metrics`)."""
