"""The real ML pipeline (examples/ml-pipeline/pipeline.yaml) in the DSL.

user-selection (SQL over a users table, Python + SQLite) -> prepare (Python)
-> [ global-model (Spark MLlib) | foreach region: region-model (R) ]
-> validate (JVM) -> repeat the training block until stable (at most 3)
-> publish (a container step that packages the model).

It needs R, Java, pyspark and the publish image
(examples/ml-pipeline/setup.sh); the stand-in reference pipeline
(reference_pipeline.py) needs nothing.

    python examples/ml_pipeline.py            # print the spec (YAML)
    python examples/ml_pipeline.py --run      # submit it, watch, print outputs
"""

from __future__ import annotations

import sys

from run_example import REPO_EXAMPLES, main

from kaon import ITERATION, RUN, Defaults, Expr, Foreach, Group, Resources, Retry, Step, Workflow, step

PUBLISH = (
    "mkdir -p package && printf '%s\\n' \"$MODEL\" > package/model.json && "
    "tar -czf model.tar.gz package && "
    "printf '{\"package\": \"%s/model.tar.gz\", \"bytes\": %s, \"sha256\": \"%s\"}' \"$PWD\" "
    "\"$(wc -c < model.tar.gz)\" \"$(sha256sum model.tar.gz | cut -d ' ' -f 1)\" > \"$KAON_OUTPUTS_FILE\""
)


@step(kind="r")
def region_model(script: str, region: Expr, region_dir: Expr, models: str) -> list[object]:
    """A per-region GLM in R."""
    return [script, region, region_dir, models, ITERATION]


def build() -> Workflow:
    wf = Workflow(
        "ml-pipeline",
        description="Select users, prepare cohorts, train a global Spark model and per-region R models "
        "until stable, publish.",
        defaults=Defaults(resources=Resources(cpus=0.5, mem="512MiB"), retry=Retry(platform_errors=2), timeout="15m"),
    )
    here = wf.param("dir", str, default="examples/ml-pipeline", description="this folder (absolute on a cluster)")
    work = wf.param(
        "work",
        str,
        default="/tmp/kaon-ml",
        description="data shared by the steps (users.db, cohorts, models); every agent must see it",
    )
    users = wf.param("users", int, default=20000, description="users in the generated table")
    master = wf.param(
        "spark_master", str, default="local[2]", description="where the global model's Spark application runs"
    )
    tolerance = wf.param(
        "tolerance",
        str,
        default="1e-6",
        description="largest coefficient change between rounds that counts as stable",
    )
    run_dir = f"{work}/run-{RUN.id}"
    models = f"{run_dir}/models"

    with wf:
        selection = Step(
            "user-selection", kind="python", run=[f"{here}/steps/select_users.py", work, run_dir, users]
        )
        prepare = Step(
            "prepare", kind="python", run=[f"{here}/steps/prepare.py", selection.outputs["table"], run_dir]
        )
        with Group("train") as train:
            global_model = Step(
                "global-model",
                kind="spark",
                resources=Resources(cpus=2, mem="3GiB", disk="1GiB"),
                run=["--master", master, "--conf", "spark.local.dir=scratch", f"{here}/steps/global_model.py",
                     prepare.outputs["global_cohort"], models, ITERATION],
            )
            regions = Foreach(prepare.outputs["regions"], as_="region", max_concurrency=3)
            per_region = region_model.with_options(name="region-model", foreach=regions)(
                f"{here}/steps/region_model.R", regions.item, prepare.outputs["region_dir"], models
            )
            validate = Step(
                "validate",
                kind="jvm",
                depends_on=[global_model, per_region],
                run=[f"{here}/steps/Validate.java", models, ITERATION, tolerance],
            )
        train.repeat_until(validate.outputs["stable"] == True, max_iterations=3)  # noqa: E712
        Step(
            "publish",
            kind="container",
            image="kaon-ml-publish:local",
            resources=Resources(cpus=0.5, mem="128MiB"),
            env={"MODEL": train.outputs["validate"]["model_json"]},
            shell=PUBLISH,
        )
    return wf


if __name__ == "__main__":
    # Scripts by absolute path: steps run in their own sandbox directories.
    sys.exit(main(build(), {"dir": str(REPO_EXAMPLES / "ml-pipeline")}))
