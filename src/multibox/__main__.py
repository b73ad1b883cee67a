"""``python -m multibox``: the command line (also what torchrun launches: ``torchrun ... -m multibox train``)."""

import sys

from .cli import main

sys.exit(main())
