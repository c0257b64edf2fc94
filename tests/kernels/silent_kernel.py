"""A kernel that starts but never speaks: no sockets bound, no replies, ever."""

from __future__ import annotations

import signal

if __name__ == "__main__":
    while True:
        signal.pause()  # until SIGKILL / SIGTERM ends the process
