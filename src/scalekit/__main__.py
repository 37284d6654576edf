"""``python -m scalekit``: the same as the ``scalekit`` command."""

import sys

from scalekit.cli import main

if __name__ == "__main__":
    sys.exit(main())
