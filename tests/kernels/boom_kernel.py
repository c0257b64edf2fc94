"""A kernel that dies on start: writes "boom" to stderr and exits with code 3."""

from __future__ import annotations

import sys

if __name__ == "__main__":
    sys.stderr.write("boom: this kernel refuses to start\n")
    sys.stderr.flush()
    sys.exit(3)
