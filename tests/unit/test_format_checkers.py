"""``skip_unused_format_checkers``: the daemon's nbformat import without jsonschema's ``iri``
checker (whose module builds a lark grammar at import), and validation unchanged.

Each case runs in a fresh interpreter: the point is what a process imports from its start.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PROBE = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from runtimed.storage.ipynb import parse_notebook, skip_unused_format_checkers
    from runtimed.errors import NotebookInvalid

    if sys.argv[1] == "skip":
        skip_unused_format_checkers()
    results = {}
    for name in sys.argv[2:]:
        path = Path(name)
        try:
            parse_notebook(path.read_bytes(), path)
            results[path.name] = "ok"
        except NotebookInvalid as exc:
            results[path.name] = "invalid: " + str(exc).split(": ", 1)[1]
    loaded = sys.modules.get("rfc3987_syntax", "never imported")
    print(json.dumps({"results": results, "rfc3987_syntax": repr(loaded)[:40]}))
    """
)


def _notebooks(tmp_path: Path) -> list[Path]:
    valid = {
        "nbformat": 4,
        "nbformat_minor": 5,
        "metadata": {"jupyter": {"homepage": "https://jupyter.org/é"}},
        "cells": [
            {"id": "a", "cell_type": "raw", "metadata": {"format": "text/html"}, "source": "x"},
            {
                "id": "b",
                "cell_type": "code",
                "metadata": {},
                "source": "1",
                "outputs": [],
                "execution_count": None,
            },
        ],
    }
    bad_type = json.loads(json.dumps(valid))
    bad_type["cells"][1]["execution_count"] = "one"
    missing = json.loads(json.dumps(valid))
    del missing["cells"][1]["outputs"]
    paths = []
    for name, nb in (("valid", valid), ("bad_type", bad_type), ("missing", missing)):
        path = tmp_path / f"{name}.ipynb"
        path.write_text(json.dumps(nb))
        paths.append(path)
    return paths


def _probe(mode: str, paths: list[Path]) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode, *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    result: dict[str, object] = json.loads(out.stdout)
    return result


@pytest.mark.skipif(
    importlib.util.find_spec("rfc3987_syntax") is None,
    reason="rfc3987_syntax is not installed (no jupyter_server): nothing to skip",
)
def test_the_iri_checker_module_is_not_imported_and_validation_is_unchanged(
    tmp_path: Path,
) -> None:
    paths = _notebooks(tmp_path)
    plain = _probe("plain", paths)
    skipped = _probe("skip", paths)
    assert plain["rfc3987_syntax"] != "None"  # jsonschema imported it, as it does by default
    assert skipped["rfc3987_syntax"] == "None"  # marked absent: never imported
    assert skipped["results"] == plain["results"]
    results = skipped["results"]
    assert isinstance(results, dict)
    assert results["valid.ipynb"] == "ok"
    assert results["bad_type.ipynb"].startswith("invalid")
    assert results["missing.ipynb"].startswith("invalid")


def test_after_jsonschema_is_imported_it_changes_nothing() -> None:
    code = (
        "import sys, jsonschema\n"
        "from runtimed.storage.ipynb import skip_unused_format_checkers\n"
        "skip_unused_format_checkers()\n"
        "print(sys.modules.get('rfc3987_syntax', 'absent') is not None)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "True"  # not marked absent once jsonschema has loaded
