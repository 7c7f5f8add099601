"""``python -m kvmpage.cli``: the same as the ``kvmpage`` console script."""

import sys

from kvmpage.cli import main

sys.exit(main())
