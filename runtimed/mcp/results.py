"""What a tool call returns, or raises."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from runtimed.errors import RuntimedError
from runtimed.mcp.outputs import Image

__all__ = ["ToolError", "ToolResult"]


class ToolError(RuntimedError):
    """A tool call failed; ``str(error)`` is the message for the agent."""


@dataclass(slots=True)
class ToolResult:
    data: dict[str, Any]
    images: list[Image] = field(default_factory=list)
