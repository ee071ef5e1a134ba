"""``python -m server``: the same command line as ``eventstreaming``."""

import sys

from server.cli import main

sys.exit(main())
