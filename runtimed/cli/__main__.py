"""``python -m runtimed.cli`` is ``runt``."""

from __future__ import annotations

import sys

from runtimed.cli.main import main

sys.exit(main())
