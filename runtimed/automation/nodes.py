"""Notebook nodes without nbformat: what a run's client side needs to prepare a notebook.

``runt run`` prepares a notebook the way papermill does (``metadata.papermill``, injected
parameters, the cells' records) on dicts with attribute access, as nbformat's
``NotebookNode``. Importing nbformat costs ~50 ms, and in an environment with
``jupyter_server`` installed its ``jsonschema`` costs over a second more (its format
checkers build a grammar at import): a process that only reads, edits and writes a
notebook the daemon validates again does not pay that. nbformat is still imported when it
is needed: to upgrade a notebook older than 4.5 (:func:`upgrade`) and to validate
(:mod:`runtimed.automation.report`'s careful path).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["NBFORMAT", "NBFORMAT_MINOR", "Node", "from_dict", "upgrade"]

NBFORMAT = 4
NBFORMAT_MINOR = 5
"""The notebook format version runs write (nbformat's ``v4.nbformat_minor``)."""


class Node(dict[str, Any]):
    """A dict with attribute access; mappings set into it become nodes (as
    ``NotebookNode``, whose behaviour the preparation code relies on)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def __delattr__(self, name: str) -> None:
        try:
            del self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setitem__(self, key: str, value: Any) -> None:
        if isinstance(value, Mapping) and not isinstance(value, Node):
            value = from_dict(value)
        super().__setitem__(key, value)

    def setdefault(self, key: str, default: Any = None) -> Any:
        if key not in self:
            self[key] = default
        return self[key]

    def update(self, *args: Any, **kwargs: Any) -> None:
        for key, value in dict(*args, **kwargs).items():
            self[key] = value

    def __deepcopy__(self, memo: dict[int, Any]) -> Node:
        copied: Node = from_dict(_plain_copy(self))
        return copied


def _plain_copy(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain_copy(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain_copy(v) for v in value]
    return value


def from_dict(value: Any) -> Any:
    """``value`` with every mapping (inside lists too) made a :class:`Node` (a copy of the
    containers; leaves are shared), as ``nbformat.from_dict``."""
    if isinstance(value, Mapping):
        node = Node()
        for key, item in value.items():
            dict.__setitem__(node, key, from_dict(item))
        return node
    if isinstance(value, list | tuple):
        return [from_dict(item) for item in value]
    return value


def upgrade(nb: Any) -> Any:
    """``nbformat.v4.upgrade``: a 4.5 notebook is returned as it is (no nbformat import);
    any other version goes to nbformat."""
    if nb.get("nbformat") == NBFORMAT and nb.get("nbformat_minor") == NBFORMAT_MINOR:
        return nb
    import nbformat

    upgraded = nbformat.v4.upgrade(nbformat.from_dict(nb))
    return from_dict(upgraded)
