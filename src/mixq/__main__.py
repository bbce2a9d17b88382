"""``python -m mixq``: the command line (same as the ``mixq`` console script)."""

import sys

from mixq.cli import main

if __name__ == "__main__":
    sys.exit(main())
