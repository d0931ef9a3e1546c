"""``python -m ipt.cli``: the ``ipt`` command."""

import sys

from ipt.cli import main

sys.exit(main())
