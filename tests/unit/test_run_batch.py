"""Batch specs for ``runt run --batch`` and ``--output-dir`` (parsing only; no daemon)."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtimed.automation.batch import BatchSpecError, load_spec, runs_for_inputs


def spec(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    return path


def test_grid_is_a_cartesian_product_with_templated_outputs(tmp_path: Path) -> None:
    path = spec(
        tmp_path,
        """
jobs: 3
defaults:
  parameters: {seed: 1, alpha: 9}
  execution_timeout: 30
  cwd: data
grid:
  input: train.ipynb
  output: "out/{name}-{alpha}.ipynb"
  parameters:
    alpha: [0.1, 0.2]
    name: [a, b]
    day: 2024-01-02
    pair: [[1, 2]]
""",
    )
    runs, jobs = load_spec(path, parameters={"seed": 0, "cli": True})
    assert jobs == 3
    assert [Path(r.output).name for r in runs] == [
        "a-0.1.ipynb",
        "b-0.1.ipynb",
        "a-0.2.ipynb",
        "b-0.2.ipynb",
    ]
    first = runs[0]
    assert first.input == str(tmp_path / "train.ipynb")
    assert first.output == str(tmp_path / "out" / "a-0.1.ipynb")
    assert first.parameters == {
        "seed": 1,
        "cli": True,
        "alpha": 0.1,
        "name": "a",
        "day": "2024-01-02",
        "pair": [1, 2],
    }
    assert first.options == {"execution_timeout": 30, "cwd": str(tmp_path / "data")}


def test_notebooks_then_grids_and_per_run_options(tmp_path: Path) -> None:
    path = spec(
        tmp_path,
        """
notebooks:
  - {input: a.ipynb, output: out/a.ipynb, parameters: {x: 1}, kernel: python3}
  - input: b.ipynb
    output: "out/b-{x}.ipynb"
    parameters: {x: "{weird}"}
grid:
  - {input: c.ipynb, output: "out/c-{k}.ipynb", parameters: {k: [1]}}
  - {input: d.ipynb, output: out/d.ipynb}
""",
    )
    runs, jobs = load_spec(path)
    assert jobs is None
    assert [Path(r.input).name for r in runs] == ["a.ipynb", "b.ipynb", "c.ipynb", "d.ipynb"]
    assert runs[0].options == {"kernel": "python3"}
    # Braces coming from parameter values are escaped for the run's own path templating.
    assert runs[1].output.endswith("out/b-{{weird}}.ipynb")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("notebooks: [{input: a.ipynb}]", "'output' must be a path"),
        ("notebooks: [{input: a.ipynb, output: o.ipynb, colour: red}]", "unknown key"),
        ("grid: {input: a.ipynb, output: 'o-{missing}.ipynb'}", "'missing'"),
        ("notebooks: [{input: a, output: o.ipynb}, {input: b, output: o.ipynb}]", "both write"),
        ("jobs: 0\nnotebooks: [{input: a, output: o}]", "'jobs' must be a positive integer"),
        ("defaults: {execution_timeout: soon}\nnotebooks: [{input: a, output: o}]", "wrong type"),
        ("{}", "no runs"),
        ("notebooks: [1", "invalid YAML"),
        ("- a\n- b", "expected a mapping"),
    ],
)
def test_bad_specs_say_what_is_wrong(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(BatchSpecError, match=message):
        load_spec(spec(tmp_path, text))


def test_missing_spec_file(tmp_path: Path) -> None:
    with pytest.raises(BatchSpecError, match="cannot read the batch spec"):
        load_spec(tmp_path / "nope.yaml")


def test_inputs_with_output_dir(tmp_path: Path) -> None:
    runs = runs_for_inputs(["x/a.ipynb", "y/b.ipynb"], "out", parameters={"p": 1})
    assert [(r.input, r.output, r.parameters) for r in runs] == [
        ("x/a.ipynb", "out/a.ipynb", {"p": 1}),
        ("y/b.ipynb", "out/b.ipynb", {"p": 1}),
    ]
    with pytest.raises(BatchSpecError, match="both write"):
        runs_for_inputs(["x/a.ipynb", "y/a.ipynb"], "out")
