"""Shared fixtures: the anyio backend (asyncio on uvloop, as the daemon runs), and a deadline
on every async test that works under uvloop.

pytest-timeout's default method (SIGALRM) cannot stop a test here: uvloop runs the Python
signal handler inside one of its callbacks and logs the exception that handler raises instead
of letting it out, so a hung test hangs the suite (a CI run was lost that way). So every async
test runs under ``anyio.fail_after(ASYNC_TEST_DEADLINE)``, which cancels it in the event loop and
fails it with the traceback of the await it was stuck in; pyproject's ``timeout`` (thread
method, a longer bound) is the last resort for a hang outside the loop: it prints every
thread's stack and ends the run.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest

ASYNC_TEST_DEADLINE = 300.0


def _bounded(test: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(test)
    async def bounded(*args: Any, **kwargs: Any) -> Any:
        with anyio.fail_after(ASYNC_TEST_DEADLINE):
            return await test(*args, **kwargs)

    return bounded


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Everything under tests/integration/ starts real processes: mark it so. Every async
    test gets the in-loop deadline."""
    for item in items:
        if "integration" in item.path.parts:
            item.add_marker(pytest.mark.integration)
        if isinstance(item, pytest.Function) and inspect.iscoroutinefunction(item.obj):
            item.obj = _bounded(item.obj)


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, bool]]:
    return ("asyncio", {"use_uvloop": True})
