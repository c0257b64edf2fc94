"""The docs stay true: every wire message is documented, every path the docs name exists."""

from __future__ import annotations

import re
from pathlib import Path

import msgspec
import pytest

from protocol import messages

ROOT = Path(__file__).resolve().parents[2]
DOCS = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]


def _message_classes() -> list[type[msgspec.Struct]]:
    bases = (messages.Request, messages.Reply, messages.Event)
    found: list[type[msgspec.Struct]] = []
    stack: list[type[msgspec.Struct]] = list(bases)
    while stack:
        cls = stack.pop()
        for sub in cls.__subclasses__():
            stack.append(sub)
            found.append(sub)
    return found


def _tag(cls: type[msgspec.Struct]) -> str:
    tag = msgspec.inspect.type_info(cls).tag  # type: ignore[attr-defined]
    assert isinstance(tag, str)
    return tag


@pytest.mark.parametrize("cls", _message_classes(), ids=lambda c: c.__name__)
def test_every_message_tag_is_documented_in_protocol_md(cls: type[msgspec.Struct]) -> None:
    text = (ROOT / "docs" / "protocol.md").read_text()
    assert f"`{_tag(cls)}`" in text, f"{cls.__name__} ({_tag(cls)!r}) is not in docs/protocol.md"


_PATH = re.compile(r"`((?:runtimed|protocol|blobstore|tests|bench|docs)/[\w/.\-]*\.(?:py|md|toml|ts|json))`")


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_source_path_the_docs_name_exists(doc: Path) -> None:
    missing = [p for p in _PATH.findall(doc.read_text()) if not (ROOT / p).exists()]
    assert not missing, f"{doc.name} names files that do not exist: {missing}"
