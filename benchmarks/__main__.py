"""``python -m benchmarks``: every family's whole pipeline, jaxgen against diffusers (``benchmarks/suite.py``)."""

import sys

from benchmarks.suite import main

sys.exit(main())
