"""A real ipykernel that ignores shutdown_request and SIGTERM: only SIGKILL ends it.

SIG_IGN is inherited across fork/exec, so processes a cell starts ignore SIGTERM too.
"""

from __future__ import annotations

import signal
from typing import Any

from ipykernel.ipkernel import IPythonKernel
from ipykernel.kernelapp import launch_new_instance


async def _ignore_shutdown_request(self: IPythonKernel, *args: Any, **kwargs: Any) -> None:
    """Swallow shutdown_request: no reply, no exit."""


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # control_handlers are looked up by name when the kernel is constructed.
    IPythonKernel.shutdown_request = _ignore_shutdown_request  # type: ignore[method-assign,assignment]
    launch_new_instance()
