"""The client against a real 3-node cluster: the node serving a watch dies
(or freezes) mid-run, and the watch goes on from another node."""

from __future__ import annotations

from typing import Callable, List, Tuple

from conftest import Cluster, wait_for
from kaon import Client, RunEvent, Step, Workflow

#: Steps in a chain, each a short sleep: a run long enough to disrupt.
STEPS = 8


def client_first_at(cluster: Cluster, i: int) -> Client:
    """A client for every node, node i first (its watch streams from i)."""
    addrs = cluster.addrs()
    return Client([addrs[i]] + [a for j, a in enumerate(addrs) if j != i], deadline=30)


def watch_through(client: Client, name: str, disrupt: Callable[[], None]) -> Tuple[int, List[RunEvent], int]:
    """Submits a chain of steps, watches it, calls ``disrupt`` once the
    second step runs; returns the run id, the events seen and the index
    of the event after which the disruption happened."""
    with Workflow(name) as wf:
        prev = None
        for i in range(STEPS):
            prev = Step(f"s{i}", shell="sleep 0.4", depends_on=[prev] if prev else [])
    run = client.submit(wf)
    seen: List[RunEvent] = []
    at = None
    for ev in run.watch():
        seen.append(ev)
        if at is None and ev.run.step("s1").status == "running":
            disrupt()
            at = ev.index
    assert at is not None, "the run ended before the disruption"
    return run.id, seen, at


def assert_whole(seen: List[RunEvent], at: int, replay: List[int]) -> None:
    """The watch saw the run to its end, every event once, in order, the
    same events a fresh watch replays, and some after the disruption."""
    idx = [e.index for e in seen]
    assert idx == sorted(set(idx)), f"repeated or out of order: {idx}"
    assert any(i > at for i in idx), "nothing arrived after the disruption"
    assert seen[-1].kind == "run_finished" and seen[-1].run.status == "succeeded", seen[-1].run.message
    assert replay == idx, "a fresh watch replays other events: some were missed"


def test_a_watch_goes_on_through_a_leader_kill_missing_and_repeating_nothing(cluster: Cluster) -> None:
    leader = cluster.leader()
    assert leader is not None
    client = client_first_at(cluster, leader)
    run_id, seen, at = watch_through(client, "through-failover", lambda: cluster.kill(leader))
    survivor = cluster.addrs()[(leader + 1) % cluster.n]
    assert_whole(seen, at, [e.index for e in Client(survivor).watch(run_id)])
    assert client.endpoint != f"http://{cluster.addrs()[leader]}"
    # The steps ran once each, across the failover.
    assert [s.attempts for s in seen[-1].run.tasks] == [1] * STEPS
    assert wait_for("a new leader", cluster.leader) != leader


def test_a_watch_on_a_node_that_stops_answering_moves_to_another(cluster: Cluster) -> None:
    leader = cluster.leader()
    assert leader is not None
    follower = (leader + 1) % cluster.n
    client = client_first_at(cluster, follower)
    client.watch_idle_seconds = 1.0
    client.watch_probe_seconds = 1.0
    # SIGSTOP: the node's TCP connections stay open and silent.
    run_id, seen, at = watch_through(client, "through-a-frozen-node", lambda: cluster.pause(follower))
    assert_whole(seen, at, [e.index for e in Client(cluster.addrs()[leader]).watch(run_id)])
    assert client.endpoint != f"http://{cluster.addrs()[follower]}"
    cluster.pause(follower, False)


def test_a_watch_survives_a_failover_after_a_long_quiet_step(cluster: Cluster) -> None:
    """The watch's deadline counts from when the node stopped serving it,
    not from the last event: a step quiet for longer than the deadline,
    then a leader kill, is not a reason to give up."""
    import threading

    leader = cluster.leader()
    assert leader is not None
    client = client_first_at(cluster, leader)
    client.deadline = 3.0
    with Workflow("quiet-then-failover") as wf:
        quiet = Step("quiet", shell="sleep 7")
        Step("after", shell="true", depends_on=[quiet])
    run = client.submit(wf)
    timer = None
    seen: List[RunEvent] = []
    for ev in run.watch():
        seen.append(ev)
        if timer is None and ev.run.step("quiet").status == "running":
            # 4.5 s of silence (more than the deadline), then the kill.
            timer = threading.Timer(4.5, cluster.kill, [leader])
            timer.start()
    assert timer is not None
    timer.join()
    assert cluster.nodes[leader] is None, "the leader was not killed before the run ended"
    assert seen[-1].kind == "run_finished" and seen[-1].run.succeeded
