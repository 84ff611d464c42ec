"""``python -m pvfinder``: the ``pvfinder`` command under a chosen interpreter."""

import sys

from .cli import main

sys.exit(main())
