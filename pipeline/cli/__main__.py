"""`python -m pipeline.cli`: how `pipeline up` starts its workers and API in child processes."""

import sys

from pipeline.cli import main

sys.exit(main())
