"""Issue 13 point 17: every ``runt`` subcommand has a description, every option a help text;
point 15: one way of naming a cell everywhere."""

from __future__ import annotations

import argparse

from runtimed.automation.batch import BatchProgress, format_summary
from runtimed.automation.report import FailedCell, NotebookExecutionError, RunResult
from runtimed.cli.commands import build_parser
from runtimed.cli.run import format_failure


def _commands(
    parser: argparse.ArgumentParser, prefix: str = "runt"
) -> list[tuple[str, argparse.ArgumentParser]]:
    found = [(prefix, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += _commands(sub, f"{prefix} {name}")
    return found


def test_every_command_and_option_is_described() -> None:
    missing = []
    for name, parser in _commands(build_parser()):
        if not parser.description:
            missing.append(f"{name}: no description")
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
                continue
            if action.help is None:
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}")
    assert missing == []


def _failed() -> FailedCell:
    return FailedCell(
        index=3,
        cell_id="abc",
        source="1/0",
        ename="ZeroDivisionError",
        evalue="x",
        execution_count=2,
    )


def test_a_cell_is_named_the_same_everywhere() -> None:
    failed = _failed()
    name = "cell 3 (id 'abc', In [2])"
    assert failed.name == name
    result = RunResult(
        status="failed",
        input_path="a.ipynb",
        output_path="b.ipynb",
        duration=1,
        failed_cell=failed,
    )
    assert format_failure(failed, color=False).startswith(name)
    assert name in str(NotebookExecutionError(result))
    assert name in format_summary([result])
    lines: list[str] = []
    BatchProgress(1, lines.append).done(0, result)
    assert name in lines[0]
