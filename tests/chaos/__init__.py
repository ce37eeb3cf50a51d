"""Fault drills (issue 12, deliverable 7): real components, a known set of datums, a fault fired at
10%, 50% and 90% of the drain, and the exact-set oracle. `make chaos` prints the full table;
`python -m tests.chaos --help` lists the faults."""
