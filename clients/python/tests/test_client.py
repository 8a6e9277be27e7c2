"""The client against a real single-node kaon server."""

from __future__ import annotations

import io
import json
import sys
import pathlib

import pytest
from rich.console import Console

from conftest import REPO, SCRIPTS, Server, wait_for
from definitions import DEFINITIONS
from kaon import (
    RUN,
    Client,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    SpecError,
    Step,
    Unauthenticated,
    Workflow,
    new_idempotency_key,
)
from kaon.progress import Progress

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "examples"))
import ml_pipeline  # noqa: E402
import reference_pipeline  # noqa: E402

REGIONS = ["us", "eu", "apac"]


def test_the_reference_pipeline_from_python_runs_and_its_outputs_are_plain_data(client: Client) -> None:
    wf = reference_pipeline.build()
    run = client.submit(wf, params={"scripts": SCRIPTS, "stable_after": 2})
    assert not run.existing
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120)
    final = run.wait(progress=Progress(console))
    assert final.status == "succeeded", final.message
    assert final.id == run.id and final.workflow == "reference-pipeline"
    assert final.params["stable_after"] == 2
    # Two rounds (stable from round 2), three regions each.
    assert final.outputs["prepare"] == {"regions": REGIONS, "cohorts": 2}
    assert final.outputs["train#1/validate"] == {"stable": False}
    assert final.outputs["train#2/validate"] == {"stable": True}
    assert [final.outputs[f"train#2/region-model[{i}]"]["region"] for i in range(3)] == REGIONS
    assert "train#3/validate" not in final.outputs
    tasks = {s.path: s for s in final.tasks}
    assert tasks["publish"].status == "succeeded" and tasks["publish"].attempts == 1
    assert tasks["train#1/region-model[0]"].attempt_list[0].state == "TASK_FINISHED"
    assert tasks["train#1/region-model[0]"].attempt_list[0].exit_code == 0
    assert final.step("on_exit/report").status == "succeeded"
    with pytest.raises(KeyError, match="no step 'nope'"):
        final.step("nope")
    # The display showed every task ending, and the run's result.
    shown = out.getvalue()
    for path in ("user-selection", "train#2/region-model[2]", "publish"):
        assert path in shown
    assert f"run {run.id}" in shown and "succeeded" in shown
    # Logs, as the step wrote them.
    assert "preparing two cohorts" in run.logs("prepare")
    assert "ended succeeded" in client.logs(run.id, "on_exit/report")
    chunk = client.read_log(run.id, "prepare", offset=-6)
    assert chunk.complete and chunk.data.decode() == "horts\n" and chunk.offset == chunk.size - 6
    # Listed, newest first; the registered spec is the one the DSL wrote.
    assert run.id in [r.id for r in client.list_runs(workflow="reference-pipeline")]
    assert all(r.status == "succeeded" for r in client.list_runs(status="succeeded", limit=None))
    # The server stores the spec the DSL wrote; registering the YAML file
    # finds that same version (identical canonical spec: no new version).
    info = client.get_workflow("reference-pipeline")
    assert_within(wf.to_dict(), info.versions[-1].spec)
    yaml_version = client.register(REPO / "examples" / "reference-pipeline" / "pipeline.yaml")
    assert yaml_version.version == info.versions[-1].version
    assert client.register(wf) == yaml_version.__class__("reference-pipeline", yaml_version.version, False)


def test_a_plain_watch_prints_a_line_per_change(client: Client) -> None:
    with Workflow("two-steps") as wf:
        a = Step("a", shell="echo a")
        Step("b", shell="echo b", depends_on=[a])
    run = client.submit(wf)
    out = io.StringIO()
    final = run.wait(progress=Progress(Console(file=out, force_terminal=False), live=False))
    lines = out.getvalue().splitlines()
    assert final.succeeded
    assert "  succeeded  a" in lines and "  succeeded  b" in lines
    assert lines.index("  succeeded  a") < lines.index("  running    b")
    assert lines[-1] == f"run {run.id} succeeded"


def test_watch_yields_each_event_once_in_order_and_resumes_after_an_index(client: Client) -> None:
    with Workflow("watched") as wf:
        a = Step("a", shell="echo a")
        Step("b", shell="echo b", depends_on=[a])
    run = client.submit(wf)
    events = list(run.watch())
    idx = [e.index for e in events]
    assert idx == sorted(set(idx)), f"not strictly increasing: {idx}"
    assert events[0].kind == "run_submitted" and events[-1].kind == "run_finished"
    assert events[-1].run.status == "succeeded"
    assert [e.kind for e in events].count("run_finished") == 1
    # Resuming after any index gives exactly the rest; past the end, nothing.
    for after in (idx[0], idx[len(idx) // 2], idx[-2]):
        assert [e.index for e in run.watch(after_index=after)] == [i for i in idx if i > after]
    assert list(run.watch(after_index=idx[-1])) == []
    # Watching a finished run replays it (each event with the run as it is now).
    replay = list(client.watch(run.id))
    assert [e.index for e in replay] == idx and all(e.run.succeeded for e in replay)


def test_submit_is_idempotent_with_a_key_and_by_name(client: Client) -> None:
    with Workflow("idem") as wf:
        Step("a", shell="echo ${{ params.who }}")
    wf.param("who", str, default="world")
    reg = client.register(wf)
    assert reg.name == "idem" and reg.version >= 1
    assert client.register(wf) == type(reg)(name="idem", version=reg.version, created=False)
    key = new_idempotency_key()
    first = client.submit("idem", {"who": "kaon"}, idempotency_key=key)
    again = client.submit("idem", {"who": "kaon"}, idempotency_key=key)
    assert again.id == first.id and again.existing and not first.existing
    other = client.submit("idem")
    assert other.id != first.id
    assert first.wait().params == {"who": "kaon"}
    assert "kaon" in first.logs("a")
    assert "idem" in [w.name for w in client.list_workflows()]


def test_cancel_and_retry(client: Client) -> None:
    with Workflow("slow") as wf:
        Step("wait", shell="sleep 30")
    with wf.on_exit:
        Step("bye", shell=f"echo {RUN.status} {RUN.cancelled}")
    run = client.submit(wf)
    wait_for("the step to run", lambda: run.get().step("wait").status == "running")
    run.cancel("enough")
    final = run.wait()
    assert final.status == "cancelled" and final.message == "cancelled: enough"
    # The exit handler saw what the run ended with.
    assert run.logs("on_exit/bye") == "cancelled true\n"
    key = new_idempotency_key()
    again = run.retry(idempotency_key=key)
    assert again.id != run.id and not again.existing
    assert run.retry(idempotency_key=key).id == again.id
    wait_for("the retry's step to run", lambda: again.get().step("wait").status == "running")
    again.cancel()
    assert again.wait().status == "cancelled"
    # A retry runs its own exit handler (it reports the new run).
    assert again.logs("on_exit/bye") == "cancelled true\n"
    with pytest.raises(FailedPrecondition) as e:
        client.submit(wf).retry()
    assert "running" in e.value.message


def test_errors_are_exceptions_with_the_servers_message_and_code(client: Client) -> None:
    with pytest.raises(NotFound) as nf:
        client.get_run(987654321)
    assert nf.value.code == "NOT_FOUND" and "987654321" in nf.value.message
    with pytest.raises(NotFound):
        client.get_workflow("no-such-workflow")
    with pytest.raises(InvalidArgument) as bad:
        client.submit("idem-missing-param-wf") if False else client.submit(_needs_param(client), {})
    assert "who" in bad.value.message
    with pytest.raises(InvalidArgument, match="apiVersion"):
        client.submit({"apiVersion": "kaon/v2", "name": "x", "steps": {"a": {"shell": "true"}}})
    with pytest.raises(InvalidArgument, match="looks like a workflow name"):
        client.register("just-a-name")


def _needs_param(client: Client) -> Workflow:
    wf = Workflow("needs-param")
    wf.param("who", str)
    with wf:
        Step("a", shell="echo ${{ params.who }}")
    return wf


def test_invalid_definitions_fail_with_the_servers_errors_naming_the_python_step(client: Client) -> None:
    # A cycle.
    with Workflow("cyclic") as wf:
        a = Step("a", shell="true")
        b = Step("b", shell="true", depends_on=[a])
    a.depends_on.append(b)
    with pytest.raises(SpecError) as e:
        client.submit(wf)
    (p,) = e.value.problems
    assert p.text == "steps: dependency cycle: a -> b -> a"
    assert [(s.name, s.defined_at) for s in p.steps] == [("a", a.defined_at), ("b", b.defined_at)]
    assert "test_client.py:" in a.defined_at
    # A reference to a step that is not upstream (dependencies not inferred).
    wf2 = Workflow("not-upstream", infer_dependencies=False)
    with wf2:
        first = Step("first", shell="echo")
        user = Step("user", run=["echo", first.outputs["x"]])
    with pytest.raises(SpecError) as e2:
        client.register(wf2)
    (p2,) = e2.value.problems
    assert p2.text.startswith("steps.user.run[1]: refers to steps.first, which is not upstream")
    assert p2.steps[0].name == "user" and p2.steps[0].defined_at == user.defined_at
    assert f"[Python step 'user' at {user.defined_at}]" in str(e2.value)
    assert e2.value.code == "INVALID_ARGUMENT"
    # With inference (the default) the same definition is valid.
    wf2.infer_dependencies = True
    assert wf2.to_dict()["steps"]["user"]["depends_on"] == ["first"]
    assert client.register(wf2).created


@pytest.mark.parametrize("name", sorted(DEFINITIONS))
def test_every_golden_definition_is_a_spec_the_server_accepts(client: Client, name: str) -> None:
    wf = DEFINITIONS[name]()
    reg = client.register(wf)
    assert reg.name == wf.name
    stored = client.get_workflow(wf.name).versions[reg.version - 1].spec
    assert_within(json.loads(wf.to_json()), stored)


def assert_within(mine: object, stored: object, path: str = "spec") -> None:
    """Everything the DSL wrote is in the server's stored (canonical) spec,
    which adds the defaults it filled in."""
    if isinstance(mine, dict):
        assert isinstance(stored, dict), f"{path}: {stored!r} is not a map"
        for k, v in mine.items():
            assert k in stored, f"{path}.{k}: missing from the stored spec"
            assert_within(v, stored[k], f"{path}.{k}")
    elif isinstance(mine, list):
        assert isinstance(stored, list) and len(stored) == len(mine), f"{path}: {stored!r}"
        for i, (a, b) in enumerate(zip(mine, stored)):
            assert_within(a, b, f"{path}[{i}]")
    else:
        assert mine == stored, f"{path}: wrote {mine!r}, stored {stored!r}"


def test_schedules_of_a_registered_workflow_pause_and_resume(client: Client) -> None:
    wf = DEFINITIONS["everything_a_step_can_say"]()
    client.register(wf)
    mine = [s for s in client.list_schedules() if s.workflow == "everything"]
    assert [(s.cron, s.paused) for s in mine] == [("0 3 * * *", False), ("@daily", True)]
    client.pause_schedule("everything", 0)
    client.resume_schedule("everything", 1)
    now = {s.index: s.paused for s in client.list_schedules() if s.workflow == "everything"}
    assert now == {0: True, 1: False}
    with pytest.raises(NotFound):
        client.pause_schedule("everything", 7)


def test_cluster_status_of_a_single_node(client: Client) -> None:
    st = client.cluster_status()
    assert st.ready and st.state == "Leader" and st.leader_id == st.node_id
    assert len(st.members) == 1 and st.members[0].voter
    assert st.applied_event_index > 0 and len(st.state_digest) == 64


def test_a_dead_address_is_skipped_and_no_answer_is_a_deadline_error(server: Server) -> None:
    from conftest import free_ports

    (dead,) = free_ports(1)
    c = Client([f"127.0.0.1:{dead}", server.addr], deadline=10)
    assert c.cluster_status().ready
    assert c.endpoint == f"http://{server.addr}"
    alone = Client(f"127.0.0.1:{dead}", deadline=0.5)
    with pytest.raises(DeadlineExceeded) as e:
        alone.cluster_status()
    assert "tries" in e.value.message and "1 servers" in e.value.message
    with pytest.raises(InvalidArgument, match="no server address"):
        Client(" , ")
    with pytest.raises(InvalidArgument, match="needs the cluster CA"):
        Client("https://127.0.0.1:1").cluster_status()


def test_tokens_and_roles(tmp_path: pathlib.Path) -> None:
    import hashlib

    def h(t: str) -> str:
        return hashlib.sha256(t.encode()).hexdigest()

    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(
        "tokens:\n"
        f"  - {{principal: ana, role: viewer, sha256: {h('viewer-secret')}}}\n"
        f"  - {{principal: bo, role: submitter, sha256: {h('submitter-secret')}}}\n"
    )
    s = Server(tmp_path / "data", ["--auth-file", str(tokens)], token="viewer-secret")
    try:
        with pytest.raises(Unauthenticated):
            Client(s.addr).list_runs()
        viewer = Client(s.addr, token="viewer-secret")
        assert viewer.list_runs() == []
        with Workflow("mine") as wf:
            Step("a", shell="true")
        with pytest.raises(PermissionDenied) as e:
            viewer.submit(wf)
        assert "ana" in e.value.message and "submitter" in e.value.message
        run = Client(s.addr, token="submitter-secret").submit(wf)
        assert run.wait().succeeded
    finally:
        s.stop()


def test_a_tls_server_with_a_token_or_a_client_certificate(tmp_path: pathlib.Path) -> None:
    import hashlib
    import subprocess

    from conftest import kaon_bin

    certs = tmp_path / "tls"
    subprocess.run([str(kaon_bin()), "tls", "init", str(certs), "--nodes", "1"], check=True, capture_output=True)
    subprocess.run([str(kaon_bin()), "tls", "cert", str(certs), "ci-bot"], check=True, capture_output=True)
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(
        "tokens:\n"
        f"  - {{principal: root, role: admin, sha256: {hashlib.sha256(b'root-secret').hexdigest()}}}\n"
        "certificates:\n"
        "  - {common_name: ci-bot, role: submitter}\n"
    )
    ca = certs / "ca.pem"
    s = Server(
        tmp_path / "data",
        ["--tls-ca", str(ca), "--tls-cert", str(certs / "node-1.pem"), "--tls-key", str(certs / "node-1.key"),
         "--auth-file", str(tokens)],
        probe=lambda addr: Client(f"https://{addr}", token="root-secret", tls_ca=ca, deadline=2),
    )
    try:
        url = f"https://{s.addr}"
        # A token over TLS.
        assert Client(url, token="root-secret", tls_ca=ca).cluster_status().ready
        # A client certificate as the identity (no token).
        bot = Client(url, tls_ca=ca, tls_cert=certs / "ci-bot.pem", tls_key=certs / "ci-bot.key")
        with Workflow("over-tls") as wf:
            Step("a", shell="echo secure")
        run = bot.submit(wf)
        assert run.wait().succeeded and "secure" in run.logs("a")
        # Without the CA the server's certificate is not trusted.
        with pytest.raises(InvalidArgument, match="needs the cluster CA"):
            Client(url, token="root-secret").cluster_status()
        # Plain text at a TLS port gets no answer, and a hint.
        with pytest.raises(DeadlineExceeded, match="if the cluster uses TLS: https:// addresses and tls_ca="):
            Client(s.addr, token="root-secret", deadline=1).cluster_status()
    finally:
        s.stop()


PROGRESS_STEP = """
import json, os, time
with open(os.environ["KAON_PROGRESS_FILE"], "a") as p:
    p.write("percent 40\\n"); p.write("status loading shard 3 of 8\\n"); p.flush()
time.sleep(1.5)
json.dump({"rows": 1200}, open(os.environ["KAON_OUTPUTS_FILE"], "w"))
"""


def test_what_a_step_reports_reaches_the_watch_and_the_outputs(client: Client) -> None:
    with Workflow("reports") as wf:
        Step("p", kind="python", run=["-c", PROGRESS_STEP])
    run = client.submit(wf)
    seen = [(s.percent, s.status_text) for ev in run.watch() for s in ev.run.tasks if s.status == "running"]
    assert (40, "loading shard 3 of 8") in seen
    assert run.get().outputs == {"p": {"rows": 1200}}


def test_a_refused_schedule_names_its_python_line(client: Client) -> None:
    with Workflow("bad-schedule") as wf:
        Step("a", shell="true")
    wf.schedule("0 3 * * *", overlap="skp")  # type: ignore[arg-type]
    with pytest.raises(SpecError) as e:
        client.register(wf)
    (p,) = e.value.problems
    assert p.text.startswith("schedules[0].overlap: unknown variant `skp`"), p.text
    assert p.steps[0].kind == "schedule" and "test_client.py:" in p.steps[0].defined_at


def test_the_ml_pipeline_from_python_registers_as_its_yaml_does(client: Client) -> None:
    # (Running it needs Spark, R, Java and Docker: crates/cli/tests/ml_pipeline.rs.)
    from_python = client.register(ml_pipeline.build())
    from_yaml = client.register(REPO / "examples" / "ml-pipeline" / "pipeline.yaml")
    assert from_python.name == from_yaml.name == "ml-pipeline"
    versions = {v.version: v.spec for v in client.get_workflow("ml-pipeline").versions}
    # The server's canonical specs are the same but for the optional
    # `kind: Workflow` line, which the DSL writes and this YAML leaves out.
    assert versions[from_python.version].pop("kind") == "Workflow"
    assert "kind" not in versions[from_yaml.version]
    assert versions[from_python.version] == versions[from_yaml.version]


def test_literals_with_braces_and_unicode_reach_the_step_as_written(client: Client) -> None:
    wf = Workflow("literals")
    p = wf.param("p", str, default="a}}b 😀")
    with wf:
        Step("a", shell=f"echo {p == 'a}}b 😀'} {p.size()}", when=p == "a}}b 😀")
    run = client.submit(wf)
    assert run.wait().succeeded
    assert run.logs("a") == "true 6\n"
