"""What the API returns, as plain Python data (frozen dataclasses).

Protobuf messages are converted here, and only here (each model's
``from_proto``), so that user code sees
``run.steps``, ``run.outputs`` and ``run.params`` as lists and dicts, and
times as ``datetime`` (UTC) when set.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Dict, List, Optional

from kaon.v1 import api_pb2

#: Run and step statuses that will not change any more.
FINAL_RUN_STATUSES = frozenset({"succeeded", "failed", "cancelled"})


def _time(unix_ms: int) -> Optional[datetime]:
    return datetime.fromtimestamp(unix_ms / 1000, tz=timezone.utc) if unix_ms > 0 else None


def _json(text: str) -> Any:
    return json.loads(text) if text else None


@dataclass(frozen=True)
class Attempt:
    """One Mesos task launched for a step."""

    number: int
    #: Mesos state name, e.g. ``TASK_FINISHED``.
    state: str
    task_id: str
    agent_id: str
    exit_code: Optional[int]
    #: The retry budget its end spends: user, platform, timeout, cancelled, invalid ("" if none).
    cause: str
    #: Why kaon killed it, if it did.
    kill: str
    message: str
    launched: Optional[datetime]
    ended: Optional[datetime]

    @staticmethod
    def from_proto(a: api_pb2.Attempt) -> "Attempt":
        return Attempt(
            number=a.number,
            state=a.state,
            task_id=a.task_id,
            agent_id=a.agent_id,
            exit_code=a.exit_code if a.HasField("exit_code") else None,
            cause=a.cause,
            kill=a.kill,
            message=a.message,
            launched=_time(a.launched_unix_ms),
            ended=_time(a.ended_unix_ms),
        )


@dataclass(frozen=True)
class Step:
    """One node of a run: a task, or a group, loop, iteration or foreach."""

    #: e.g. ``train#2/region-model[1]``.
    path: str
    #: pending, running, succeeded, failed, failed_ignored, skipped, cancelled.
    status: str
    #: task, group, loop, iteration, foreach.
    kind: str
    attempts: int
    #: Percent complete its executor last reported (0-100).
    percent: int
    #: Free text its executor last reported (e.g. a Spark stage).
    status_text: str
    message: str
    #: The JSON object the step wrote to ``$KAON_OUTPUTS_FILE`` (``{}`` if none).
    outputs: Dict[str, Any]
    depends_on: List[str]
    #: Path of the group, foreach, loop or iteration it belongs to ("" = the run).
    parent: str
    attempt_list: List[Attempt] = field(default_factory=list)

    @staticmethod
    def from_proto(s: api_pb2.Step) -> "Step":
        outputs = _json(s.outputs_json)
        return Step(
            path=s.path,
            status=s.status,
            kind=s.kind,
            attempts=s.attempts,
            percent=s.percent,
            status_text=s.status_text,
            message=s.message,
            outputs=outputs if isinstance(outputs, dict) else {},
            depends_on=list(s.depends_on),
            parent=s.parent,
            attempt_list=[Attempt.from_proto(a) for a in s.attempt_list],
        )

    @property
    def is_task(self) -> bool:
        """A step that runs a command (not a group, loop or foreach)."""
        return self.kind == "task"


@dataclass(frozen=True)
class Run:
    """A run with all its steps, as of one moment."""

    id: int
    workflow: str
    version: int
    #: running, succeeded, failed, cancelled.
    status: str
    message: str
    submitted: Optional[datetime]
    finished: Optional[datetime]
    params: Dict[str, Any]
    steps: List[Step]

    @staticmethod
    def from_proto(r: api_pb2.Run) -> "Run":
        params = _json(r.params_json)
        return Run(
            id=r.id,
            workflow=r.workflow,
            version=r.version,
            status=r.status,
            message=r.message,
            submitted=_time(r.submitted_unix_ms),
            finished=_time(r.finished_unix_ms),
            params=params if isinstance(params, dict) else {},
            steps=[Step.from_proto(s) for s in r.steps],
        )

    @property
    def done(self) -> bool:
        """The run has ended (succeeded, failed or cancelled)."""
        return self.status in FINAL_RUN_STATUSES

    @property
    def succeeded(self) -> bool:
        return self.status == "succeeded"

    @property
    def outputs(self) -> Dict[str, Dict[str, Any]]:
        """Outputs by step path, for every step that wrote some.

        A step in a loop or foreach appears once per iteration or item,
        e.g. ``train#2/validate`` or ``region-model[1]``.
        """
        return {s.path: s.outputs for s in self.steps if s.outputs}

    def step(self, path: str) -> Step:
        """The step at ``path``; ``KeyError`` naming the known paths if none."""
        for s in self.steps:
            if s.path == path:
                return s
        raise KeyError(f"run {self.id} has no step {path!r}; steps: {[s.path for s in self.steps]}")

    @property
    def tasks(self) -> List[Step]:
        """The steps that run commands (groups, loops and foreach nodes left out)."""
        return [s for s in self.steps if s.is_task]


@dataclass(frozen=True)
class RunSummary:
    """A run as listed (no steps)."""

    id: int
    workflow: str
    version: int
    status: str
    message: str
    submitted: Optional[datetime]
    finished: Optional[datetime]

    @staticmethod
    def from_proto(r: api_pb2.RunSummary) -> "RunSummary":
        return RunSummary(
            id=r.id,
            workflow=r.workflow,
            version=r.version,
            status=r.status,
            message=r.message,
            submitted=_time(r.submitted_unix_ms),
            finished=_time(r.finished_unix_ms),
        )


@dataclass(frozen=True)
class RunEvent:
    """One committed event of a run, and the run as the server saw it when
    it sent the event (right after it while live; now, for a replay).

    ``index`` is the event's position in the replicated log: a watch that
    resumes after a leader change continues after the last index seen, so
    no event is missed or repeated.
    """

    index: int
    #: The event's type, e.g. ``task_status_observed``, ``run_finished``.
    kind: str
    time: Optional[datetime]
    run: Run
    #: The event itself (``kaon.events.v1.Event``), for auditors.
    raw: Any = field(repr=False, compare=False, default=None)


@dataclass(frozen=True)
class Registered:
    """The answer to registering a workflow."""

    name: str
    version: int
    #: False when an identical spec was already registered as ``version``.
    created: bool

    @staticmethod
    def from_proto(r: api_pb2.RegisterWorkflowResponse) -> "Registered":
        return Registered(name=r.name, version=r.version, created=r.created)


@dataclass(frozen=True)
class WorkflowVersion:
    version: int
    #: The spec as registered (the JSON document, parsed).
    spec: Dict[str, Any]
    registered: Optional[datetime]
    #: Registered by a submit of an inline spec (not by register).
    from_submit: bool

    @staticmethod
    def from_proto(v: api_pb2.WorkflowVersion) -> "WorkflowVersion":
        return WorkflowVersion(v.version, json.loads(v.spec_json), _time(v.registered_unix_ms), v.from_submit)


@dataclass(frozen=True)
class WorkflowInfo:
    """A registered workflow with all its versions, oldest first."""

    name: str
    versions: List[WorkflowVersion]

    @staticmethod
    def from_proto(r: api_pb2.GetWorkflowResponse) -> "WorkflowInfo":
        return WorkflowInfo(name=r.name, versions=[WorkflowVersion.from_proto(v) for v in r.versions])


@dataclass(frozen=True)
class WorkflowSummary:
    name: str
    latest_version: int
    schedules: int

    @staticmethod
    def from_proto(w: api_pb2.WorkflowSummary) -> "WorkflowSummary":
        return WorkflowSummary(w.name, w.latest_version, w.schedules)


@dataclass(frozen=True)
class Schedule:
    workflow: str
    index: int
    cron: str
    timezone: str
    paused: bool
    last_fire: Optional[datetime]

    @staticmethod
    def from_proto(x: api_pb2.Schedule) -> "Schedule":
        return Schedule(x.workflow, x.index, x.cron, x.timezone, x.paused, _time(x.last_fire_unix_ms))


@dataclass(frozen=True)
class Member:
    id: int
    raft_addr: str
    voter: bool
    lag_entries: int
    api_addr: str
    reachable: bool

    @staticmethod
    def from_proto(m: api_pb2.ClusterMember) -> "Member":
        return Member(m.id, m.raft_addr, m.voter, m.lag_entries, m.api_addr, m.reachable)


@dataclass(frozen=True)
class ClusterStatus:
    """One node's view of the cluster."""

    node_id: int
    #: Leader, Follower, Candidate, Learner.
    state: str
    term: int
    #: 0 when no leader is known.
    leader_id: int
    applied_event_index: int
    ready: bool
    not_ready_reason: str
    members: List[Member]
    state_digest: str

    @staticmethod
    def from_proto(r: api_pb2.ClusterStatusResponse) -> "ClusterStatus":
        return ClusterStatus(
            node_id=r.node_id,
            state=r.state,
            term=r.term,
            leader_id=r.leader_id,
            applied_event_index=r.applied_event_index,
            ready=r.ready,
            not_ready_reason=r.not_ready_reason,
            members=[Member.from_proto(m) for m in r.members],
            state_digest=r.state_digest,
        )


@dataclass(frozen=True)
class LogChunk:
    """Part of a step attempt's stdout or stderr."""

    data: bytes
    offset: int
    size: int
    task_id: str
    #: The attempt ended, so the file will not grow.
    complete: bool

    @staticmethod
    def from_proto(r: api_pb2.ReadStepLogsResponse) -> "LogChunk":
        return LogChunk(data=r.data, offset=r.offset, size=r.size, task_id=r.task_id, complete=r.complete)
