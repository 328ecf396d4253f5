"""``python -m kvmonai.cli``: the ``kvmonai`` command line."""

import sys

from kvmonai.cli import main

sys.exit(main())
