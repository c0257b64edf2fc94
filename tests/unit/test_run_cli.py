"""``runt run`` output helpers and argument handling that need no daemon."""

from __future__ import annotations

import io
import json
from pathlib import Path

import nbformat
import pytest

from runtimed.automation.batch import format_summary
from runtimed.automation.progress import OutputLog, ProgressBar, strip_ansi
from runtimed.automation.report import FailedCell, RunResult
from runtimed.cli import main
from runtimed.cli.run import format_failure

RED = "\x1b[31m"


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def stream(text: str, name: str = "stdout") -> dict[str, object]:
    return {"output_type": "stream", "name": name, "text": text}


def test_output_log_writes_each_part_once_as_outputs_grow() -> None:
    log, out, err = io.StringIO(), io.StringIO(), io.StringIO()
    sink = OutputLog(log=log, stdout_file=out, stderr_file=err)
    sink.cell_started(0, "c")
    sink.outputs("c", [stream("a")], final=False)
    sink.outputs("c", [stream("ab")], final=False)
    result = {"output_type": "execute_result", "data": {"text/plain": "42"}}
    sink.outputs("c", [stream("abc\n"), stream("oops\n", "stderr"), result], final=False)
    sink.outputs(
        "c",
        [
            stream("abc\n"),
            stream("oops\n", "stderr"),
            result,
            {"output_type": "error", "ename": "E", "evalue": "v", "traceback": [f"{RED}E: v"]},
        ],
        final=True,
    )
    sink.cell_finished(0)
    assert out.getvalue() == "abc\n"
    assert err.getvalue() == "oops\n"
    assert log.getvalue() == (
        f"Executing Cell 1{'-' * 39}\nabc\noops\n42\n{RED}E: v\nEnding Cell 1{'-' * 42}\n"
    )


def test_progress_bar_draws_only_on_a_terminal() -> None:
    plain = io.StringIO()
    bar = ProgressBar(4, stream=plain)
    bar.update(2, force=True)
    bar.close()
    assert plain.getvalue() == ""
    tty = FakeTTY()
    bar = ProgressBar(4, stream=tty)
    bar.update(2, force=True)
    bar.close()
    assert tty.getvalue().startswith("\rExecuting:  50%|")
    assert "| 2/4 [" in tty.getvalue()
    assert tty.getvalue().endswith("\n")


def test_failure_report_keeps_colour_only_for_terminals() -> None:
    failed = FailedCell(
        index=3,
        cell_id="abc",
        source="x = 1\n" * 12 + "raise E",
        ename="E",
        evalue="boom",
        traceback=[f"{RED}Traceback", f"{RED}E: boom"],
        execution_count=4,
    )
    plain = format_failure(failed, color=False)
    assert plain.splitlines()[0] == "cell 3 (id 'abc', In [4]) failed:"
    assert "  1 | x = 1" in plain
    assert "... (5 more lines)" in plain
    assert "\x1b" not in plain
    assert plain.rstrip().endswith("E: boom")
    assert RED in format_failure(failed, color=True)
    timeout = FailedCell(
        index=0,
        cell_id="c",
        source="s",
        ename="ExecutionTimeout",
        evalue="too slow",
        status="timeout",
    )
    assert "timed out" in format_failure(timeout, color=False)
    assert format_failure(timeout, color=False).rstrip().endswith("ExecutionTimeout: too slow")
    assert strip_ansi(f"{RED}x\x1b[0m") == "x"


def test_summary_table() -> None:
    failed = FailedCell(index=2, cell_id="c", source="", ename="ValueError", evalue="bad\nmore")
    text = format_summary(
        [
            RunResult(status="ok", input_path="a.ipynb", output_path="o/a.ipynb", duration=1.25),
            RunResult(
                status="failed",
                input_path="b.ipynb",
                output_path="o/b.ipynb",
                duration=2,
                failed_cell=failed,
            ),
            RunResult(
                status="error",
                input_path="c.ipynb",
                output_path="o/c.ipynb",
                duration=0,
                error="c.ipynb: no such notebook file",
            ),
        ]
    )
    lines = text.splitlines()
    assert lines[0].split() == ["INPUT", "OUTPUT", "STATUS", "TIME", "FAILED", "CELL"]
    assert lines[1].split() == ["a.ipynb", "o/a.ipynb", "ok", "1.2s"]
    assert lines[2].endswith("cell 2 (id 'c') ValueError: bad")
    assert lines[4] == "1 ok, 1 failed, 1 could not run, 3 notebooks"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "only-one.ipynb"], "INPUT and OUTPUT"),
        (["run", "a.ipynb", "b.ipynb", "-p", "x-y", "1"], "not a valid Python identifier"),
        (["run", "a.ipynb", "b.ipynb", "-b", "abc"], "base64"),
        (["run", "--batch", "s.yaml", "extra.ipynb"], "--batch takes no NOTEBOOK"),
        (["run", "--output-dir", "out"], "needs at least one input"),
    ],
)
def test_usage_errors_exit_2(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    nb = nbformat.v4.new_notebook()
    nbformat.write(nb, tmp_path / "a.ipynb")
    argv = [str(tmp_path / a) if a.endswith(".ipynb") else a for a in argv]
    status = main(
        ["--socket", str(tmp_path / "no.sock"), *argv, "--no-autostart"]
        if argv[0] == "run"
        else argv
    )
    assert status == 2
    assert message in capsys.readouterr().err


def test_no_daemon_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    nbformat.write(nbformat.v4.new_notebook(), tmp_path / "a.ipynb")
    status = main(
        [
            "--socket",
            str(tmp_path / "no.sock"),
            "run",
            str(tmp_path / "a.ipynb"),
            str(tmp_path / "b.ipynb"),
            "--no-autostart",
        ]
    )
    err = capsys.readouterr().err
    assert status == 2
    assert "no runtimed daemon" in err
    assert "Traceback" not in err


def test_inspect_json_and_scraps_without_a_daemon(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cell = nbformat.v4.new_code_cell("a = 1  # the a")
    cell.metadata["tags"] = ["parameters"]
    scrap = nbformat.v4.new_output(
        "display_data",
        data={
            "application/vnd.runtimed.scrap+json": {
                "name": "total",
                "data": [1, 2],
                "encoder": "json",
            }
        },
    )
    nb = nbformat.v4.new_notebook(cells=[cell, nbformat.v4.new_code_cell("x", outputs=[scrap])])
    nbformat.write(nb, tmp_path / "n.ipynb")
    assert main(["inspect", str(tmp_path / "n.ipynb"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["parameters"] == [
        {"name": "a", "inferred_type_name": "None", "default": "1", "help": "the a"}
    ]
    assert main(["scraps", str(tmp_path / "n.ipynb")]) == 0
    assert capsys.readouterr().out.splitlines() == ["NAME   VALUE", "total  [1, 2]"]
    assert main(["scraps", str(tmp_path / "missing.ipynb")]) == 2
    assert "no such notebook file" in capsys.readouterr().err
