"""``runt`` builds only the named command's arguments (runtimed.cli.commands)."""

from __future__ import annotations

import argparse

import pytest

from runtimed.cli.commands import _command_of, build_parser


@pytest.mark.parametrize(
    ("argv", "command"),
    [
        (["ps"], "ps"),
        (["--socket", "/s", "daemon", "status"], "daemon"),
        (["--socket=/s", "run", "a", "b"], "run"),
        (["--help"], None),
        (["--version"], None),
        ([], None),
        (["--socket"], None),
    ],
)
def test_the_command_is_found_after_the_global_options(
    argv: list[str], command: str | None
) -> None:
    assert _command_of(argv) == command


def _choices(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    [action] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def test_every_command_is_listed_and_the_named_one_parses_as_in_the_whole_parser() -> None:
    whole, only = build_parser(), build_parser("run")
    assert list(_choices(only)) == list(_choices(whole))
    argv = ["--socket", "/s", "run", "in.ipynb", "out.ipynb", "-p", "a", "1", "--jobs", "2"]
    assert only.parse_args(argv) == whole.parse_args(argv)
    status = ["daemon", "status", "--json"]
    assert build_parser("daemon").parse_args(status) == whole.parse_args(status)
