"""The DSL: golden specs, the reference pipeline, and definitions it refuses.

``KAON_UPDATE_GOLDEN=1 pytest tests/test_dsl.py`` rewrites the golden
files (review the diff).
"""

from __future__ import annotations

import json
import os
import pathlib
import sys

import pytest
import yaml

from definitions import DEFINITIONS
from kaon import DSLError, Expr, Foreach, Group, Step, Workflow, step
from kaon.dsl import split_spec_errors
from kaon.errors import InvalidArgument, node_path_of

HERE = pathlib.Path(__file__).resolve().parent
GOLDEN = HERE / "golden"
REPO = HERE.parents[2]
sys.path.insert(0, str(HERE.parent / "examples"))

import ml_pipeline  # noqa: E402
import reference_pipeline  # noqa: E402


@pytest.mark.parametrize("name", sorted(DEFINITIONS))
def test_definition_compiles_to_its_golden_spec(name: str) -> None:
    got = DEFINITIONS[name]().to_dict()
    path = GOLDEN / f"{name}.json"
    if os.environ.get("KAON_UPDATE_GOLDEN"):
        path.write_text(json.dumps(got, indent=2) + "\n")
    assert path.is_file(), f"no golden file {path}: run with KAON_UPDATE_GOLDEN=1 and review it"
    want = json.loads(path.read_text())
    assert got == want, f"{name}: the compiled spec differs from {path}"
    # Key order is part of what a reader sees: the golden file keeps it.
    assert json.dumps(got, indent=2) + "\n" == path.read_text()


def test_reference_pipeline_in_python_is_the_yaml_one() -> None:
    wf = reference_pipeline.build()
    want = yaml.safe_load((REPO / "examples" / "reference-pipeline" / "pipeline.yaml").read_text())
    assert wf.to_dict() == want
    # The YAML and JSON forms are the same document.
    assert yaml.safe_load(wf.to_yaml()) == want
    assert json.loads(wf.to_json()) == want


def test_the_real_ml_pipeline_in_python_is_the_yaml_one() -> None:
    want = yaml.safe_load((REPO / "examples" / "ml-pipeline" / "pipeline.yaml").read_text())
    # `kind: Workflow` is optional in a spec; the DSL always writes it.
    assert "kind" not in want
    want["kind"] = "Workflow"
    assert ml_pipeline.build().to_dict() == want


def test_expressions_render_as_cel() -> None:
    with Workflow("x") as wf:
        a = Step("user-selection", shell="true")
    assert str(a.outputs["table"]) == "${{ steps['user-selection'].outputs.table }}"
    assert a.outputs["my-key"].cel == "steps['user-selection'].outputs['my-key']"
    assert (a.outputs.n > 3).cel == "steps['user-selection'].outputs.n > 3"
    assert ((a.outputs.n > 3) | (a.outputs.n == 0)).cel == (
        "(steps['user-selection'].outputs.n > 3) || (steps['user-selection'].outputs.n == 0)"
    )
    assert (~a.outputs.ok).cel == "!steps['user-selection'].outputs.ok"
    assert a.outputs.names.contains("x").cel == '"x" in steps[\'user-selection\'].outputs.names'
    assert a.outputs.names.size().cel == "size(steps['user-selection'].outputs.names)"
    assert (Expr("x") == [1, "a", None, {"k": False}]).cel == 'x == [1, "a", null, {"k": false }]'
    assert f"--n={wf.param('n', int)}" == "--n=${{ params.n }}"
    with pytest.raises(DSLError, match="evaluated by kaon at run time"):
        bool(a.outputs.ok)


def test_a_reference_to_a_dashed_name_uses_the_bracket_form_and_still_counts() -> None:
    with Workflow("x") as wf:
        a = Step("user-selection", shell="true")
        Step("b", shell=f"echo {a.outputs['t']}")
    assert wf.to_dict()["steps"]["b"]["depends_on"] == ["user-selection"]


def test_definitions_it_refuses_say_what_and_where() -> None:
    with pytest.raises(DSLError, match=r"step 'a' \(at .*test_dsl.py:\d+\) is created outside a workflow"):
        Step("a", shell="true")
    with Workflow("x"):
        Step("a", shell="true")
        with pytest.raises(DSLError, match=r"steps.a: a step named 'a' is already defined here \(at .*test_dsl.py"):
            Step("a", shell="true")
        with pytest.raises(DSLError, match="exactly one of run= .* or shell="):
            Step("b", run=["x"], shell="y")
        with pytest.raises(DSLError, match="run= is an argv list"):
            Step("c", run="echo hi")
    wf = Workflow("y")
    with wf:
        Group("empty")
    with pytest.raises(DSLError, match="steps.empty .*a group needs at least one step"):
        wf.to_dict()
    with pytest.raises(DSLError, match="type must be one of"):
        wf.param("p", set)

    @step  # type: ignore[arg-type]  # what the type checker catches, the DSL refuses at run time too
    def bad() -> int:
        return 3

    with Workflow("z"), pytest.raises(DSLError, match="must return an argv list or a shell line"):
        bad()


def test_server_errors_are_split_and_tied_to_python_steps() -> None:
    with Workflow("x") as wf:
        a = Step("a", shell="true")
        with Group("g") as g:
            b = Step("b", shell="true")
            c = Step("c", shell="true", depends_on=[b])
        b.depends_on.append(c)
    msg = (
        "invalid spec: steps.g.steps: dependency cycle: b -> c -> b; "
        'steps.a.run[1]: unknown variable "x" in "x"; available: steps, params, run; '
        "name: invalid name \"X\"; steps.g.steps.c.when: bad"
    )
    assert split_spec_errors(msg) == [
        "steps.g.steps: dependency cycle: b -> c -> b",
        'steps.a.run[1]: unknown variable "x" in "x"; available: steps, params, run',
        'name: invalid name "X"',
        "steps.g.steps.c.when: bad",
    ]
    assert node_path_of("line 5 column 3: steps.g.steps.c.run[0]: x") == "steps.g.steps.c"
    e = wf.explain(InvalidArgument(msg))
    assert [[s.name for s in p.steps] for p in e.problems] == [["b", "c"], ["a"], ["x"], ["c"]]
    assert [p.steps[0].kind for p in e.problems] == ["step", "step", "workflow", "step"]
    assert g.path == "steps.g" and c.path == "steps.g.steps.c"
    assert all(s.defined_at.startswith("tests/test_dsl.py:") or "test_dsl.py:" in s.defined_at
               for p in e.problems for s in p.steps)
    assert f"[Python step 'a' at {a.defined_at}]" in str(e)


def test_only_step_references_become_dependencies() -> None:
    with Workflow("refs") as wf:
        Step("x", shell="true")
        Step("y", shell="true")
        Step("z", shell="echo steps.x ${{ params.steps.x }} ${{ mysteps.y }}")
        Step("w", shell="true", when="steps['x'].status == 'succeeded' && params.steps.y")
    steps = wf.to_dict()["steps"]
    assert "depends_on" not in steps["z"]
    assert steps["w"]["depends_on"] == ["x"]


def test_foreach_over_a_python_list_is_a_cel_list() -> None:
    assert Foreach(["us", "eu"]).items == '["us", "eu"]'
    assert Foreach("params.regions").items == "params.regions"


def test_durations_and_env_values_are_checked_where_they_are_written() -> None:
    import datetime

    with Workflow("d") as wf:
        Step("a", shell="true", timeout=5)
        Step("b", shell="true", timeout=1.5)
        Step("c", shell="true", timeout=datetime.timedelta(minutes=90))
        with pytest.raises(DSLError, match=r"steps.bad \(at .*test_dsl.py:\d+\): a duration is .* not \[5\]"):
            Step("bad", shell="true", timeout=[5])  # type: ignore[arg-type]
        with pytest.raises(DSLError, match=r"steps.e \(at .*test_dsl.py:\d+\): env A: a value is .* not None"):
            Step("e", shell="true", env={"A": None})  # type: ignore[dict-item]
    steps = wf.to_dict()["steps"]
    assert [steps[n]["timeout"] for n in "abc"] == ["5s", "1500ms", "90m"]
    # A refused definition leaves nothing half-made behind.
    assert list(steps) == ["a", "b", "c"]


def test_errors_about_schedules_params_and_the_workflow_name_their_python_line() -> None:
    wf = Workflow("w")
    wf.param("n", int)
    with wf:
        Step("a", shell="true")
    wf.schedule("0 3 * * *", overlap="skp")  # type: ignore[arg-type]
    msg = (
        "invalid spec: line 1 column 511: schedules[0].overlap: unknown variant `skp`; "
        "params.n: bad; timeout: bad"
    )
    e = wf.explain(InvalidArgument(msg))
    assert [p.text for p in e.problems] == [
        "schedules[0].overlap: unknown variant `skp`",
        "params.n: bad",
        "timeout: bad",
    ]
    assert [(p.steps[0].kind, p.steps[0].name) for p in e.problems] == [
        ("schedule", "0"),
        ("param", "n"),
        ("workflow", "w"),
    ]
    assert all("test_dsl.py:" in p.steps[0].defined_at for p in e.problems)
    assert "schedules[0].overlap: unknown variant `skp`  [Python schedule 0 at " in str(e)


def test_values_are_written_as_cel_the_server_can_read() -> None:
    x = Expr("x")
    # Unicode as it is; `}` escaped so that no `}}` ends a `${{ }}`.
    assert (x == "😀").cel == 'x == "😀"'
    assert (x == "a}}b").cel == 'x == "a\\u007d\\u007db"'
    assert "}}" not in (x == {"a": {"b": 1}, 2: [{"c": None}]}).cel
    assert (x == {"a": {"b": 1}, 2: "z"}).cel == 'x == {"a": {"b": 1 }, 2: "z" }'
    for bad in (float("inf"), float("nan"), 2**63):
        with pytest.raises(DSLError):
            x == bad  # noqa: B015
    with pytest.raises(DSLError, match="cannot be iterated"):
        list(x)
    with pytest.raises(DSLError, match="expr.contains"):
        1 in x  # noqa: B015


def test_a_refused_definition_leaves_nothing_half_made() -> None:
    with Workflow("half") as wf:
        a = Step("a", shell="true")
        with pytest.raises(DSLError, match=r"steps.b \(at .*\): .*cpu"):
            Step("b", shell="true", resources={"cpu": 1})
        # A single step is a dependency list of one.
        Step("b", shell="true", depends_on=a)
    assert wf.to_dict()["steps"]["b"] == {"depends_on": ["a"], "shell": "true"}


def test_generated_names_never_hide_a_step_and_hidden_names_are_refused() -> None:
    @step
    def train(region: str) -> list[str]:
        return ["train.py", region]

    with Workflow("names") as wf:
        us = train("us")
        with Group("g"):
            eu = train("eu")
            Step("use", shell=f"echo {us.outputs['model']}")
    assert (us.name, eu.name) == ("train", "train-2")
    d = wf.to_dict()["steps"]
    assert d["g"]["depends_on"] == ["train"]
    assert "depends_on" not in d["g"]["steps"]["use"]
    # Given names may shadow; a reference through the shadow is refused.
    with Workflow("shadow") as wf2:
        Step("prep", shell="true")
        with Group("g"):
            Step("prep", shell="true")
            Step("use", shell="echo ${{ steps.prep.outputs.x }}")
    with pytest.raises(DSLError, match=r"steps.g.steps.use .*steps.prep names steps.g.steps.prep .*hides steps.prep"):
        wf2.to_dict()


def test_text_in_string_literals_is_not_a_reference_and_a_group_is_not_a_dependency_of_its_steps() -> None:
    with Workflow("lit") as wf:
        a = Step("a", shell="true", when=Expr("m") == "steps.b")
        Step("b", shell="true", depends_on=[a])
    assert "depends_on" not in wf.to_dict()["steps"]["a"]
    with Workflow("own") as wf2:
        with Group("g") as g:
            Step("x", shell="true", depends_on=[g])
    with pytest.raises(DSLError, match="steps.g.steps.x .*depends on steps.g, the group it is in"):
        wf2.to_dict()


def test_a_step_decorator_refuses_an_unknown_option_at_once() -> None:
    with pytest.raises(DSLError, match=r"@step at .*test_dsl.py:\d+: unknown option\(s\) \['retyr'\]"):
        step(retyr=3)  # type: ignore[call-overload]
