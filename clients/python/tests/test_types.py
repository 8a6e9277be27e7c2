"""The package's type hints catch DSL mistakes before anything runs (PEP 561)."""

from __future__ import annotations

import pathlib
import textwrap

from mypy import api

GOOD = """
from kaon import Client, Step, Workflow, step

@step(kind="python")
def train(data: object, epochs: int) -> list[object]:
    return ["train.py", data, epochs]

with Workflow("typed") as wf:
    prepare = Step("prepare", shell="./prepare.sh", on_failure="ignore")
    model = train(data=prepare.outputs["cohort"], epochs=3)
run = Client("127.0.0.1:1").run(1)
final_status: str = run.client.get_run(1).status
"""

BAD = """
from kaon import Step, Workflow, step

@step
def train(data: object, epochs: int) -> list[object]:
    return ["train.py", data, epochs]

with Workflow("typed") as wf:
    Step("a", shell="x", kind="pyhton")
    Step("b", shell="x", on_failure="ignored")
    train(dataa=1, epochs=3)
    train(data=1, epochs="three")
    wf.schedule("@daily", overlap="skp")

@step(kind="pyhton", retyr=3)
def other() -> str:
    return "true"
"""


def check(tmp_path: pathlib.Path, source: str) -> list[str]:
    f = tmp_path / "pipeline.py"
    f.write_text(textwrap.dedent(source))
    out, err, _ = api.run(["--strict", "--no-incremental", "--cache-dir", str(tmp_path / ".mypy"), str(f)])
    assert not err, err
    return [line for line in out.splitlines() if ": error:" in line]


def test_a_correct_pipeline_type_checks(tmp_path: pathlib.Path) -> None:
    assert check(tmp_path, GOOD) == []


def test_mistakes_are_type_errors_on_their_lines(tmp_path: pathlib.Path) -> None:
    errors = check(tmp_path, BAD)
    lines = sorted({int(e.split(":")[1]) for e in errors})
    # kind, on_failure, an unknown argument, a wrong argument type, overlap,
    # a decorator's kind and unknown option.
    assert lines == [9, 10, 11, 12, 13, 15], "\n".join(errors)
    assert any('"retyr"' in e for e in errors)
    assert any("'pyhton'" in e for e in errors)
    assert any('"dataa"' in e for e in errors)
