"""``python -m jaxgen`` is the ``jaxgen`` command."""

import sys

from jaxgen.cli import main

sys.exit(main())
