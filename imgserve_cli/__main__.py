"""``python -m imgserve_cli``: the ``imgserve`` command."""

from __future__ import annotations

import sys

from imgserve_cli.main import main

if __name__ == "__main__":
    sys.exit(main())
