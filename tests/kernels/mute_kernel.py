"""An ipykernel that runs cells but never answers ``complete_request`` or ``inspect_request``
(it drops them), to test that a request the kernel leaves unanswered times out cleanly."""

from __future__ import annotations

from typing import Any

from ipykernel.ipkernel import IPythonKernel
from ipykernel.kernelapp import IPKernelApp


class MuteKernel(IPythonKernel):
    async def complete_request(self, stream: Any, ident: Any, parent: Any) -> None:
        return  # dropped: no reply, ever

    async def inspect_request(self, stream: Any, ident: Any, parent: Any) -> None:
        return


if __name__ == "__main__":
    IPKernelApp.launch_instance(kernel_class=MuteKernel)
