"""``runt ps`` and ``runt daemon status`` answered without the full parser
(runtimed.cli.quick): exactly the argument lists the full parser reads the same way."""

from __future__ import annotations

import pytest

from runtimed.cli.commands import build_parser
from runtimed.cli.quick import quick_command


@pytest.mark.parametrize(
    ("argv", "command", "socket", "as_json"),
    [
        (["ps"], "ps", None, False),
        (["ps", "--json"], "ps", None, True),
        (["daemon", "status"], "daemon", None, False),
        (["daemon", "status", "--json"], "daemon", None, True),
        (["--socket", "/s", "ps"], "ps", "/s", False),
        (["--socket=/s", "daemon", "status", "--json"], "daemon", "/s", True),
    ],
)
def test_the_quick_forms_are_read_as_the_full_parser_reads_them(
    argv: list[str], command: str, socket: str | None, as_json: bool
) -> None:
    assert quick_command(argv) is not None
    args = build_parser().parse_args(argv)
    assert (args.command, args.socket, args.json) == (command, socket, as_json)
    if command == "daemon":
        assert args.action == "status"


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["ps", "--help"],
        ["ps", "-h"],
        ["ps", "--jsn"],
        ["ps", "--json", "--json"],
        ["ps", "extra"],
        ["ps", "--socket", "/s"],  # --socket is a global option: before the command
        ["daemon"],
        ["daemon", "stop"],
        ["daemon", "status", "now"],
        ["--socket"],
        ["--socket", "--json", "ps"],
        ["--sockets", "/s", "ps"],
        ["--help"],
        ["pool"],
    ],
)
def test_anything_else_goes_to_the_full_parser(argv: list[str]) -> None:
    assert quick_command(argv) is None
