"""Python workflow definitions with golden specs (tests/golden/NAME.json).

Each function builds one workflow; test_dsl.py compiles it and compares
with the golden file, and test_client.py has the server validate it.
"""

from __future__ import annotations

import datetime
from typing import Callable, Dict

from kaon import (
    INDEX,
    ITERATION,
    RUN,
    Backoff,
    Constraint,
    Defaults,
    File,
    Foreach,
    Group,
    Resources,
    Retry,
    Secret,
    Step,
    Workflow,
    step,
)


@step(kind="python", resources=Resources(cpus=1, mem="2GiB"), timeout=datetime.timedelta(hours=2))
def train(data: object, epochs: object) -> list[object]:
    return ["train.py", "--data", data, "--epochs", epochs]


@step
def evaluate(model: object) -> str:
    return f"./evaluate.sh {model}"


def outputs_become_dependencies() -> Workflow:
    """train(data=prepare.outputs["cohort"]) -> depends_on + ${{ }}."""
    wf = Workflow("outputs-become-dependencies", description="data flows, dependencies follow")
    epochs = wf.param("epochs", int, default=3)
    with wf:
        prepare = Step("prepare", kind="python", run=["prepare.py"])
        model = train(data=prepare.outputs["cohort"], epochs=epochs)
        evaluate(model=model.outputs.path)
        # A second call of the same function gets a numbered name.
        train(data=prepare.outputs["holdout"], epochs=1)
    return wf


def foreach_when_and_loops() -> Workflow:
    wf = Workflow("foreach-when-and-loops", on_failure="finish_running", timeout="6h")
    regions = wf.param("regions", list, default=["us", "eu"])
    with wf:
        check = Step("check", shell="./check.sh", retry=Retry(user_errors=2, backoff=Backoff.fixed("5s")))
        # A list known at submit (a parameter) ...
        per = Foreach(regions, as_="region", max_concurrency=4)
        Step("per-region", run=["fit.R", per.item, INDEX], kind="r", foreach=per,
             when=(check.outputs["ok"] == True) & ~(check.outputs["mode"] == "dry"))  # noqa: E712
        # ... and a literal list.
        lit = Foreach(["a", "b"])
        Step("letters", shell=f"echo {lit.item}", foreach=lit, depends_on=[check])
        with Group("tune", depends_on=[check]) as tune:
            fit = Step("fit", run=["fit.py", ITERATION])
            score = Step("score", run=["score.py", fit.outputs["model"]])
        tune.repeat_until(score.outputs["loss"] < 0.1, max_iterations=5, on_max_iterations="fail")
        Step("skip-me", shell="true", when=False, on_failure="ignore")
    return wf


def nested_references_lift_to_groups() -> Workflow:
    """A step deep in a group that reads a top-level step's outputs makes its
    enclosing top-level group depend on that step."""
    wf = Workflow("nested-references")
    with wf:
        a = Step("a", shell="./a.sh")
        with Group("outer"):
            with Group("inner"):
                Step("deep", shell=f"./deep.sh {a.outputs['x']}")
        b = Step("b", shell="./b.sh")
        with Group("fan", foreach=Foreach(b.outputs["items"], max_items=10)):
            Step("one", run=["one.sh", "${{ item }}"])
            Step("two", run=["two.sh"], when=a.status == "succeeded")
    return wf


def everything_a_step_can_say() -> Workflow:
    wf = Workflow(
        "everything",
        defaults=Defaults(
            resources=Resources(cpus=0.5, mem=512),
            retry=Retry(platform_errors=5, timeouts=1,
                        backoff=Backoff.exponential(datetime.timedelta(seconds=10), max="5m", factor=3)),
            timeout="1h",
            env={"STAGE": "prod"},
        ),
    )
    with wf:
        Step("container", kind="container", image="kaon/publish:latest", run=["publish"],
             env={"TOKEN": Secret("registry-token"), "RUN_ID": RUN.id, "DEBUG": False},
             secrets=["db-password"],
             files=["https://example.com/data.tgz", File("https://example.com/tool", executable=True, extract=False)],
             resources=Resources(cpus=2, mem="4GiB", disk="10GiB", gpus=1),
             constraints=[Constraint("rack", equals="r1"), Constraint("zone", like="eu-.*")],
             timeout=datetime.timedelta(milliseconds=1500))
        Step("spark", kind="spark", run=["--master", "local[2]", "job.py"])
        Step("jvm", kind="jvm", run=["-jar", "validate.jar"])
    with wf.on_exit:
        Step("notify", shell=f"echo run {RUN.id} {RUN.status}")
    wf.schedule("0 3 * * *", timezone="Europe/Amsterdam", overlap="skip",
                catchup_window=datetime.timedelta(hours=6))
    wf.schedule("@daily", params={"regions": ["us"]}, paused=True, overlap="queue_one")
    wf.param("regions", list, default=["us", "eu"], description="where")
    return wf


DEFINITIONS: Dict[str, Callable[[], Workflow]] = {
    "outputs_become_dependencies": outputs_become_dependencies,
    "foreach_when_and_loops": foreach_when_and_loops,
    "nested_references_lift_to_groups": nested_references_lift_to_groups,
    "everything_a_step_can_say": everything_a_step_can_say,
}
