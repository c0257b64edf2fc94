"""Per-notebook execution queue (filled in with the kernel layer)."""

from __future__ import annotations

from typing import Any

from runtimed.errors import KernelNotRunning
from runtimed.room import NotebookRoom

__all__ = ["NotebookExecutor"]


class NotebookExecutor:
    def __init__(self, room: NotebookRoom, *, config: Any) -> None:
        self.room = room

    async def run(self) -> None:
        return

    def queue_cell(self, cell_id: str) -> str:
        raise KernelNotRunning("execution is not available yet")

    def queue_all(self) -> list[tuple[str, str]]:
        raise KernelNotRunning("execution is not available yet")

    async def interrupt(self) -> None:
        raise KernelNotRunning("execution is not available yet")

    async def restart(self) -> None:
        raise KernelNotRunning("execution is not available yet")

    def clear_outputs(self, cell_ids: list[str] | None) -> None:
        raise KernelNotRunning("execution is not available yet")

    def answer_input(self, execution_id: str, value: str) -> None:
        raise KernelNotRunning("execution is not available yet")

    async def aclose(self) -> None:
        return
