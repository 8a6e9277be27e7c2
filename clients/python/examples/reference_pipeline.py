"""The reference pipeline (examples/reference-pipeline/pipeline.yaml) in the DSL.

user-selection -> prepare -> [ global-model | foreach region: region-model ]
-> validate -> repeat the training block until validate says stable
-> publish; an exit handler always reports the result.

    python examples/reference_pipeline.py            # print the spec (YAML)
    python examples/reference_pipeline.py --run      # submit, watch, print outputs
"""

from __future__ import annotations

import sys

from run_example import REPO_EXAMPLES, main

from kaon import (
    ITERATION,
    RUN,
    Backoff,
    Defaults,
    Foreach,
    Group,
    Repeat,
    Resources,
    Retry,
    Step,
    Workflow,
    step,
)


@step(name="region-model", retry=Retry(user_errors=1, backoff=Backoff.fixed("1s")))
def region_model(scripts: object, region: object, iteration: object) -> list[object]:
    """Stands in for the per-region R model."""
    return ["sh", f"{scripts}/region_model.sh", region, iteration]


def build() -> Workflow:
    """The reference pipeline as a DSL workflow."""
    wf = Workflow(
        "reference-pipeline",
        description="Select users, prepare cohorts, train global and per-region models until stable, publish.",
        defaults=Defaults(
            resources=Resources(cpus=0.1, mem=64),
            retry=Retry(platform_errors=3, backoff=Backoff.exponential("2s", max="30s")),
            timeout="10m",
        ),
    )
    scripts = wf.param(
        "scripts",
        str,
        default="examples/reference-pipeline/scripts",
        description="folder of the stand-in scripts (absolute on a cluster)",
    )
    cohort_size = wf.param("cohort_size", int, default=1000, description="users to select")
    stable_after = wf.param("stable_after", int, default=2, description="validation round that reports stable")

    with wf:
        selection = Step("user-selection", run=["sh", f"{scripts}/select_users.sh", cohort_size])
        prepare = Step("prepare", run=["sh", f"{scripts}/prepare.sh"], depends_on=[selection])
        # `until` names a step defined inside the group: a function, read
        # when the spec is built.
        train = Group(
            "train",
            repeat=Repeat(lambda: validate.outputs["stable"] == True, max_iterations=3),  # noqa: E712
        )
        with train:
            global_model = Step(
                "global-model",
                run=["sh", f"{scripts}/global_model.sh", ITERATION],
                resources=Resources(cpus=0.2, mem="128MiB", disk="256MiB"),
            )
            regions = Foreach(prepare.outputs["regions"], as_="region", max_concurrency=2)
            per_region = region_model.with_options(foreach=regions)(scripts, regions.item, ITERATION)
            validate = Step(
                "validate",
                run=["sh", f"{scripts}/validate.sh", ITERATION, stable_after],
                depends_on=[global_model, per_region],
            )
        Step("publish", run=["sh", f"{scripts}/publish.sh"], depends_on=[train])
    with wf.on_exit:
        Step("report", shell=f"echo \"run {RUN.id} of {RUN.workflow} ended {RUN.status}\"")
    wf.schedule("0 3 * * *", timezone="Europe/Amsterdam", overlap="skip", catchup_window="6h")
    return wf


if __name__ == "__main__":
    # Scripts by absolute path: steps run in their own sandbox directories.
    sys.exit(main(build(), {"scripts": str(REPO_EXAMPLES / "reference-pipeline" / "scripts")}))
