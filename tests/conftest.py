"""Shared fixtures: the anyio backend (asyncio on uvloop, as the daemon runs)."""

from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, bool]]:
    return ("asyncio", {"use_uvloop": True})
