"""The client against a real 3-node cluster: a leader killed during a watch."""

from __future__ import annotations

from typing import List

from conftest import Cluster, wait_for
from kaon import Client, RunEvent, Step, Workflow

STEPS = 8


def test_a_watch_goes_on_through_a_leader_kill_missing_and_repeating_nothing(cluster: Cluster) -> None:
    leader = cluster.leader()
    assert leader is not None
    # The leader first, so the watch's stream is on the node that dies.
    addrs = cluster.addrs()
    client = Client([addrs[leader]] + [a for i, a in enumerate(addrs) if i != leader], deadline=30)
    with Workflow("through-failover") as wf:
        prev = None
        for i in range(STEPS):
            prev = Step(f"s{i}", shell="sleep 0.4", depends_on=[prev] if prev else [])
    run = client.submit(wf)
    seen: List[RunEvent] = []
    killed_at = None
    for ev in run.watch():
        seen.append(ev)
        if killed_at is None and ev.run.step("s1").status == "running":
            cluster.kill(leader)
            killed_at = ev.index
    assert killed_at is not None, "the run ended before the leader was killed"
    final = seen[-1].run
    assert final.status == "succeeded", final.message
    assert seen[-1].kind == "run_finished"
    # Events after the kill arrived (from another node), once each, in order.
    idx = [e.index for e in seen]
    assert idx == sorted(set(idx)), f"repeated or out of order: {idx}"
    assert any(i > killed_at for i in idx)
    assert client.endpoint != f"http://{addrs[leader]}"
    # Nothing missed: a fresh watch at a surviving node replays the same events.
    survivor = Client([a for i, a in enumerate(addrs) if i != leader], deadline=30)
    assert [e.index for e in survivor.watch(run.id)] == idx
    # And the steps ran once each, across the failover.
    assert [s.attempts for s in final.tasks] == [1] * STEPS
    new_leader = wait_for("a new leader", cluster.leader)
    assert new_leader != leader
