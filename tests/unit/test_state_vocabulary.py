"""One state vocabulary (issue 9 point 5): no plain kernel-state or execution-status string
in ``runtimed/`` outside ``protocol/states.py``.

An AST scan: a string constant that is a :class:`KernelState` or :class:`ExecutionStatus`
value fails the test where it is compared with, assigned to, passed as, or returned for
something named like a state or a status (``state``, ``x.status``, ``d["state"]``,
``d.get("status", ...)``, ``state=...``). Docstrings, output types and message keys are not
states and are not matched. A run's outcome in ``automation/`` (``ok``/``failed``/``error``,
papermill's vocabulary, not an execution status) is the one listed exception.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from protocol.states import ExecutionStatus, KernelState

ROOT = Path(__file__).resolve().parents[2]
VOCABULARY = {str(m) for m in KernelState} | {str(m) for m in ExecutionStatus}
NAMES = ("state", "status")

# Not states: a papermill-compatible run's result ("ok" / "failed" / "error").
ALLOWED = {
    "runtimed/automation/report.py",
    "runtimed/automation/batch.py",
}


def names_a_state(node: ast.AST) -> bool:
    """Whether ``node`` reads as a state or status: a name, attribute, subscript key or
    ``.get`` key whose last word is ``state``/``status``."""
    if isinstance(node, ast.Name):
        return node.id.endswith(NAMES)
    if isinstance(node, ast.Attribute):
        return node.attr.endswith(NAMES)
    if isinstance(node, ast.Subscript):
        key = node.slice
        return isinstance(key, ast.Constant) and isinstance(key.value, str) and key.value in NAMES
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args:
        key = node.args[0]
        return node.func.attr == "get" and isinstance(key, ast.Constant) and key.value in NAMES
    return False


def literals(node: ast.AST) -> Iterator[ast.Constant]:
    """State strings in ``node``: a constant, a conditional's branches, a tuple/set/list."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        if node.value in VOCABULARY:
            yield node
    elif isinstance(node, ast.IfExp):
        yield from literals(node.body)
        yield from literals(node.orelse)
    elif isinstance(node, (ast.Tuple, ast.Set, ast.List)):
        for element in node.elts:
            yield from literals(element)


def call_offences(node: ast.Call) -> Iterator[ast.Constant]:
    if names_a_state(node) and len(node.args) > 1:
        yield from literals(node.args[1])  # d.get("state", "idle")
    func = node.func
    table = func.value if isinstance(func, ast.Attribute) and func.attr == "get" else None
    if isinstance(table, ast.Dict) and node.args and names_a_state(node.args[0]):
        for key in table.keys:  # {"timeout": ...}.get(x.status)
            if key is not None:
                yield from literals(key)
    if isinstance(func, ast.Name) and func.id == "RunResult":
        return  # a run's outcome, not an execution status (see ALLOWED)
    for keyword in node.keywords:
        if keyword.arg is not None and keyword.arg.endswith(NAMES):
            yield from literals(keyword.value)


def offences(tree: ast.AST) -> Iterator[ast.Constant]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            if any(names_a_state(side) for side in sides):
                for side in sides:
                    yield from literals(side)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if node.value is not None and any(names_a_state(t) for t in targets):
                yield from literals(node.value)
        elif isinstance(node, ast.Call):
            yield from call_offences(node)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args
            positional = [*args.posonlyargs, *args.args]
            for arg, default in zip(
                positional[len(positional) - len(args.defaults) :], args.defaults, strict=True
            ):
                if arg.arg.endswith(NAMES):
                    yield from literals(default)
            for arg, kw_default in zip(args.kwonlyargs, args.kw_defaults, strict=True):
                if kw_default is not None and arg.arg.endswith(NAMES):
                    yield from literals(kw_default)


def scan(source: str, filename: str = "<test>") -> list[str]:
    tree = ast.parse(source, filename)
    return [f"{filename}:{c.lineno}: {c.value!r}" for c in offences(tree)]


def test_no_plain_state_strings_in_runtimed() -> None:
    found: list[str] = []
    for path in sorted((ROOT / "runtimed").rglob("*.py")):
        relative = path.relative_to(ROOT).as_posix()
        if relative not in ALLOWED:
            found += scan(path.read_text(), relative)
    assert not found, "use protocol.states.KernelState / ExecutionStatus:\n" + "\n".join(found)


def test_the_scan_finds_each_kind_of_use() -> None:
    source = """
if kernel.state == "idle": pass
if info["status"] in ("ok", "error"): pass
status = "queued"
x = d.get("state", "not_started")
f(state="dead" if gone else "starting")
def g(status: str = "running") -> None: ...
what = {"died": "killed"}.get(failed.status)
"""
    hits = sorted(scan(source), key=lambda hit: int(hit.split(":")[1]))
    assert [hit.split(": ", 1)[1] for hit in hits] == [
        "'idle'", "'ok'", "'error'", "'queued'", "'not_started'", "'dead'", "'starting'",
        "'running'", "'died'",
    ]  # fmt: skip


def test_the_scan_leaves_other_strings_alone() -> None:
    source = '''
"""A docstring naming "idle" and "died"."""
out = {"output_type": "error"}
if output.get("output_type") == "error": pass
if kind == "error": pass
data["running"] = True
if state == KernelState.IDLE: pass
r = RunResult(status="ok")
'''
    assert scan(source) == []
