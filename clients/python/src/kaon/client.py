"""The kaon API client: any node of a cluster will do.

A :class:`Client` knows one or more server addresses and follows the same
rules as the Rust client (``crates/api/src/client.rs``): each call has a
deadline; within it a call that fails because a node is down, is not the
leader or has no leader yet (UNAVAILABLE, or a broken connection) is tried
again with backoff, first at the leader a node named in its answer (the
``kaon-leader-api`` metadata), else at the next address. Retrying is safe
because every write is idempotent: submits and retries carry an
idempotency key (a fresh one per call unless the caller gives one, the same
one on every try of that call), and the other writes are idempotent by
nature. :meth:`Client.watch` resumes a broken stream after the last event
it yielded, at any node, so a leader change neither loses nor repeats an
event.
"""

from __future__ import annotations

import json
import os
import pathlib
import queue
import re
import threading
import time
import uuid
from dataclasses import dataclass
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Dict,
    Iterator,
    List,
    Mapping,
    Optional,
    Sequence,
    TypeVar,
    Union,
)

import grpc

from kaon.errors import DeadlineExceeded, InvalidArgument, from_rpc_error
from kaon.models import (
    ClusterStatus,
    LogChunk,
    Registered,
    Run,
    RunEvent,
    RunSummary,
    Schedule,
    WorkflowInfo,
    WorkflowSummary,
    _time,
)
from kaon.v1 import api_pb2, api_pb2_grpc

if TYPE_CHECKING:
    from kaon.dsl import Workflow
    from kaon.progress import Progress

#: Metadata naming the leader's API address on UNAVAILABLE answers.
LEADER_API_HEADER = "kaon-leader-api"
#: Metadata asking for a possibly stale read from the node asked.
READ_HEADER = "kaon-read"
#: The server the CLI talks to when none is given (``KAON_SERVER`` overrides).
SERVER_DEFAULT = "http://127.0.0.1:7070"
#: Deadline of one call, retries included, in seconds.
CALL_DEADLINE_SECONDS_DEFAULT = 30.0
#: The least time one try of a call may take (a try takes a third of the
#: call's deadline, at least this), in seconds.
TRY_SECONDS_MIN = 5.0
#: First and longest pause between two tries, in seconds.
BACKOFF_SECONDS_MIN = 0.02
BACKOFF_SECONDS_MAX = 0.5
#: A watch silent this long checks its node still serves (seconds).
WATCH_IDLE_SECONDS_DEFAULT = 10.0
#: How long that check may take before the watch moves on (seconds).
WATCH_PROBE_SECONDS_DEFAULT = 5.0
#: The largest read of a step log in one call (the server's limit).
LOG_READ_BYTES_MAX = 1 << 20

_WORKFLOW_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")

T = TypeVar("T")

#: What :meth:`Client.submit` and :meth:`Client.register` accept as a
#: workflow: a DSL ``Workflow``, a spec as a dict, YAML/JSON text, or a
#: path to a spec file (``submit`` also takes a registered workflow's name).
WorkflowLike = Union["Workflow", Mapping[str, Any], str, pathlib.Path]


class _Silent(Exception):
    """A watch's node went silent and did not answer a read."""


@dataclass
class _Health:
    """What a watch knows of the node serving it."""

    #: When it last knew a node served it (monotonic seconds).
    alive: float
    #: The current stream opened (the server accepted it).
    open: bool = False


def new_idempotency_key() -> str:
    """A fresh idempotency key: a retried submit with it returns the same run."""
    return f"kaon-py-{uuid.uuid4()}"


def _url(addr: str) -> str:
    a = addr.strip()
    return a if "://" in a else f"http://{a}"


def _read(v: Union[None, str, bytes, pathlib.Path]) -> Optional[bytes]:
    """PEM bytes as given, or read from a path."""
    if v is None or isinstance(v, bytes):
        return v
    return pathlib.Path(v).read_bytes()


def _retryable(e: grpc.RpcError) -> bool:
    """Errors another try (maybe at another node) can fix: no leader, node
    down or unreachable, a forwarded call cut by a leader change."""
    if not isinstance(e, grpc.Call):
        return False
    code = e.code()
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
        return True
    if code == grpc.StatusCode.UNKNOWN:
        d = e.details() or ""
        return "transport" in d or "connection" in d
    return False


def _connection_error(e: Optional[grpc.RpcError]) -> bool:
    """The call never got an answer from a server (what a plain-text client
    sees at a TLS port), as opposed to a server's own refusal."""
    if not isinstance(e, grpc.Call) or e.code() != grpc.StatusCode.UNAVAILABLE:
        return False
    d = (e.details() or "").lower()
    return "leader" not in d and any(w in d for w in ("connect", "socket", "closed", "reset", "transport", "eof"))


def _leader_hint(e: grpc.RpcError) -> Optional[str]:
    if not isinstance(e, grpc.Call):
        return None
    for md in (e.trailing_metadata() or (), e.initial_metadata() or ()):
        for k, v in md:
            if k == LEADER_API_HEADER and isinstance(v, str) and v.strip():
                return v.strip()
    return None


class Client:
    """A client for a kaon server or cluster (see the module docs).

    ``servers`` is a comma-separated string or a list of ``host:port`` or
    URLs (``https://`` for a TLS cluster, which needs ``tls_ca``). Without
    arguments it reads ``KAON_SERVER``, ``KAON_TOKEN``, ``KAON_TLS_CA``,
    ``KAON_TLS_CERT`` and ``KAON_TLS_KEY`` as the CLI does.
    """

    def __init__(
        self,
        servers: Union[str, Sequence[str], None] = None,
        *,
        token: Optional[str] = None,
        tls_ca: Union[None, str, bytes, pathlib.Path] = None,
        tls_cert: Union[None, str, bytes, pathlib.Path] = None,
        tls_key: Union[None, str, bytes, pathlib.Path] = None,
        deadline: float = CALL_DEADLINE_SECONDS_DEFAULT,
        stale_reads: bool = False,
    ) -> None:
        if servers is None:
            servers = os.environ.get("KAON_SERVER", SERVER_DEFAULT)
        parts = servers.split(",") if isinstance(servers, str) else list(servers)
        self._endpoints: List[str] = [_url(p) for p in parts if p.strip()]
        if not self._endpoints:
            raise InvalidArgument("no server address given")
        for e in self._endpoints:
            if not e.startswith(("http://", "https://")):
                raise InvalidArgument(f"bad server address {e!r}: use host:port, http:// or https://")
        #: Bearer token sent with every call (servers with ``--auth-file``).
        self.token = token if token is not None else os.environ.get("KAON_TOKEN")
        self._tls_ca = _read(tls_ca if tls_ca is not None else os.environ.get("KAON_TLS_CA"))
        self._tls_cert = _read(tls_cert if tls_cert is not None else os.environ.get("KAON_TLS_CERT"))
        self._tls_key = _read(tls_key if tls_key is not None else os.environ.get("KAON_TLS_KEY"))
        #: Deadline of one call in seconds, retries included.
        self.deadline = deadline
        #: Accept a possibly stale read from the node asked (no round trip to the leader).
        self.stale_reads = stale_reads
        #: A watch whose stream is silent this long checks that its node
        #: still answers (and moves on if not), in seconds.
        self.watch_idle_seconds = WATCH_IDLE_SECONDS_DEFAULT
        #: How long that check may take, in seconds.
        self.watch_probe_seconds = WATCH_PROBE_SECONDS_DEFAULT
        self._channels: Dict[str, grpc.Channel] = {}
        self._current = 0

    # ------------------------------------------------------------ plumbing

    @property
    def endpoint(self) -> str:
        """The server that answered last (or will be asked first)."""
        return self._endpoints[self._current]

    def close(self) -> None:
        """Closes every connection (the client can still be used: it reconnects)."""
        for c in self._channels.values():
            c.close()
        self._channels.clear()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _stub(self, i: int) -> api_pb2_grpc.KaonStub:
        e = self._endpoints[i]
        ch = self._channels.get(e)
        if ch is None:
            target = e.split("://", 1)[1].rstrip("/")
            # Reconnect quickly to a node that comes back.
            options = [
                ("grpc.initial_reconnect_backoff_ms", 100),
                ("grpc.min_reconnect_backoff_ms", 100),
                ("grpc.max_reconnect_backoff_ms", 1000),
                ("grpc.max_receive_message_length", 64 << 20),
            ]
            if e.startswith("https://"):
                if self._tls_ca is None:
                    raise InvalidArgument(
                        f"{e}: an https:// server needs the cluster CA's certificate (tls_ca= or KAON_TLS_CA)"
                    )
                creds = grpc.ssl_channel_credentials(
                    root_certificates=self._tls_ca,
                    private_key=self._tls_key,
                    certificate_chain=self._tls_cert,
                )
                ch = grpc.secure_channel(target, creds, options=options)
            else:
                ch = grpc.insecure_channel(target, options=options)
            self._channels[e] = ch
        # The generated stub carries no types; answers become models here.
        return api_pb2_grpc.KaonStub(ch)  # type: ignore[no-untyped-call]

    def _metadata(self) -> List[tuple[str, str]]:
        md: List[tuple[str, str]] = []
        if self.stale_reads:
            md.append((READ_HEADER, "stale"))
        if self.token:
            md.append(("authorization", f"Bearer {self.token.strip()}"))
        return md

    def _follow(self, e: grpc.RpcError) -> None:
        """After a retryable error: to the leader it names, else the next node."""
        hint = _leader_hint(e)
        if hint is None:
            self._current = (self._current + 1) % len(self._endpoints)
            return
        tls = self._endpoints[self._current].startswith("https://")
        leader = f"https://{hint}" if tls and "://" not in hint else _url(hint)
        if leader not in self._endpoints:
            self._endpoints.append(leader)
        self._current = self._endpoints.index(leader)

    def _call(self, f: Callable[[api_pb2_grpc.KaonStub, float, List[tuple[str, str]]], T]) -> T:
        """Calls ``f(stub, timeout, metadata)`` until it succeeds, fails with
        an error another try cannot fix, or the deadline passes."""
        deadline = time.monotonic() + self.deadline
        backoff = BACKOFF_SECONDS_MIN
        last: Optional[grpc.RpcError] = None
        tries = 0
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                why = (last.details() if isinstance(last, grpc.Call) else None) or str(last)
                # A plain-text client at a TLS port sees only broken
                # connections: say what may be wrong.
                hint = (
                    " (if the cluster uses TLS: https:// addresses and tls_ca=)"
                    if all(e.startswith("http://") for e in self._endpoints) and _connection_error(last)
                    else ""
                )
                raise DeadlineExceeded(
                    f"no answer within {self.deadline}s after {tries} tries "
                    f"({len(self._endpoints)} servers); last error: {why}{hint}"
                )
            tries += 1
            # One try may take a part of the deadline, so that a node that
            # accepts the call and never answers (stopped, cut off) leaves
            # time for the others.
            per_try = min(left, max(TRY_SECONDS_MIN, self.deadline / 3))
            try:
                return f(self._stub(self._current), per_try, self._metadata())
            except grpc.RpcError as e:
                # A try cut by its own share of the deadline goes on elsewhere.
                cut = isinstance(e, grpc.Call) and e.code() == grpc.StatusCode.DEADLINE_EXCEEDED and per_try < left
                if not (_retryable(e) or cut):
                    raise from_rpc_error(e) from None
                last = e
                self._follow(e)
                time.sleep(min(backoff, max(0.0, deadline - time.monotonic())))
                backoff = min(backoff * 2, BACKOFF_SECONDS_MAX)

    def _unary(self, method: str, req: Any) -> Any:
        """One unary RPC of the Kaon service by name, with :meth:`_call`'s
        retries (the answer is a generated message; models convert it)."""
        return self._call(lambda s, t, md: getattr(s, method)(req, timeout=t, metadata=md))

    # ------------------------------------------------------------ workflows

    def register(self, workflow: WorkflowLike) -> Registered:
        """Registers a workflow as a new version (or finds the identical one).

        Its schedules become active. A spec the server refuses raises
        :class:`~kaon.errors.InvalidArgument` (:class:`~kaon.errors.SpecError`
        for a DSL workflow, naming the Python step of each error).
        """
        spec, wf = _spec_text(workflow)
        try:
            r = self._unary("RegisterWorkflow", api_pb2.RegisterWorkflowRequest(spec=spec))
        except InvalidArgument as e:
            raise (wf.explain(e) if wf is not None else e) from None
        return Registered.from_proto(r)

    def list_workflows(self) -> List[WorkflowSummary]:
        """Registered workflows with their latest versions."""
        r = self._unary("ListWorkflows", api_pb2.ListWorkflowsRequest())
        return [WorkflowSummary.from_proto(w) for w in r.workflows]

    def get_workflow(self, name: str) -> WorkflowInfo:
        """One workflow with every registered version and its spec."""
        return WorkflowInfo.from_proto(self._unary("GetWorkflow", api_pb2.GetWorkflowRequest(name=name)))

    # ------------------------------------------------------------ runs

    def submit(
        self,
        workflow: WorkflowLike,
        params: Optional[Mapping[str, Any]] = None,
        *,
        version: int = 0,
        idempotency_key: Optional[str] = None,
    ) -> "RunHandle":
        """Starts a run and returns a handle to it.

        ``workflow`` is a DSL workflow, a spec (dict, YAML/JSON text or a
        file path: registered if new, then run once; its schedules are not
        activated, use :meth:`register` for that) or the name of a
        registered workflow (``version`` 0 = its latest). ``params`` are
        values by name (any JSON value). With the same ``idempotency_key``
        a repeated submit returns the same run (``existing`` is then True);
        without one a fresh key protects this call's own retries.
        """
        key = idempotency_key or new_idempotency_key()
        params_json = {k: json.dumps(v, ensure_ascii=False) for k, v in (params or {}).items()}
        wf = None
        if isinstance(workflow, str) and _WORKFLOW_NAME.match(workflow):
            req = api_pb2.SubmitRunRequest(
                registered=api_pb2.WorkflowRef(name=workflow, version=version),
                params_json=params_json,
                idempotency_key=key,
            )
        else:
            if version:
                raise InvalidArgument("version= applies to a registered workflow's name, not to a spec")
            spec, wf = _spec_text(workflow)
            req = api_pb2.SubmitRunRequest(inline_spec=spec, params_json=params_json, idempotency_key=key)
        try:
            r = self._unary("SubmitRun", req)
        except InvalidArgument as e:
            raise (wf.explain(e) if wf is not None else e) from None
        # With a key of our own, "existing" only means our own retry found
        # the run its first try started: a new run to the caller.
        return RunHandle(self, r.run_id, existing=r.existing and bool(idempotency_key))

    def run(self, run_id: int) -> "RunHandle":
        """A handle to an existing run (no call is made)."""
        return RunHandle(self, run_id)

    def get_run(self, run_id: int) -> Run:
        """The run with all its steps, outputs and attempts."""
        return Run.from_proto(self._unary("GetRun", api_pb2.GetRunRequest(run_id=run_id)))

    def list_runs(
        self,
        workflow: str = "",
        status: str = "",
        *,
        limit: Optional[int] = 50,
        page_size: int = 100,
    ) -> List[RunSummary]:
        """Runs, newest first, optionally of one workflow and/or one status;
        at most ``limit`` (None = all, page by page)."""
        out: List[RunSummary] = []
        token = 0
        while True:
            size = page_size if limit is None else max(1, min(page_size, limit - len(out)))
            req = api_pb2.ListRunsRequest(workflow=workflow, status=status, page_size=size, page_token=token)
            r = self._unary("ListRuns", req)
            out.extend(RunSummary.from_proto(x) for x in r.runs)
            token = r.next_page_token
            if token == 0 or (limit is not None and len(out) >= limit):
                return out if limit is None else out[:limit]

    def watch(self, run_id: int, *, after_index: int = 0) -> Iterator[RunEvent]:
        """The run's events from its start (or after ``after_index``), live;
        ends after the event that finishes the run (at once if
        ``after_index`` is past it).

        Each event carries the run as the server saw it when it sent the
        event: right after it while the watch is live, as it is now for
        events replayed from before the call.

        A stream broken by a node's death or a leader change resumes after
        the last event yielded, at any node: no event is missed or repeated.
        A stream that stays silent while its node cannot answer a read (the
        node is stopped or cut off) resumes elsewhere too. It gives up (:class:`~kaon.errors.DeadlineExceeded`) only when no
        node answers for the client's ``deadline``.
        """
        after = after_index
        # When the watch last knew a node was serving it: an event arrived,
        # a stream opened or broke after it had opened, or a silent
        # stream's node answered a read. It gives up only after `deadline`
        # seconds without any of these.
        health = _Health(time.monotonic())
        backoff = BACKOFF_SECONDS_MIN
        last: Optional[BaseException] = None
        latest: Optional[Run] = None
        while True:
            req = api_pb2.WatchRunRequest(run_id=run_id, after_index=after)
            node = self._current
            stream = self._stub(node).WatchRun(req, metadata=self._metadata())
            health.open = False
            try:
                for ev in self._silence_checked(stream, node, run_id, health):
                    idx = ev.event.index
                    # The server sends each event once, in order; a resumed
                    # stream starts after `after`. Checked, not assumed.
                    assert idx > after, f"watch of run {run_id}: event {idx} after {after}"
                    after = idx
                    health.alive = time.monotonic()
                    backoff = BACKOFF_SECONDS_MIN
                    if ev.HasField("run"):
                        latest = Run.from_proto(ev.run)
                    elif latest is None:
                        # (A run retired meanwhile has no state to send.)
                        latest = self.get_run(run_id)
                    kind = ev.event.WhichOneof("body") or ""
                    yield RunEvent(index=idx, kind=kind, time=_time(ev.event.time_unix_ms), run=latest, raw=ev.event)
                    if kind == "run_finished":
                        return
                # The server ends the stream after the run's last event (or
                # at once when `after` is past it); a stream that ends
                # otherwise (the node stopped serving it) resumes.
                if self.get_run(run_id).done:
                    return
            except grpc.RpcError as e:
                if not _retryable(e):
                    raise from_rpc_error(e) from None
                last = e
                self._follow(e)
            except _Silent as e:
                last = e
                if self._current == node:
                    self._current = (node + 1) % len(self._endpoints)
            finally:
                stream.cancel()
            if health.open:
                # It served until it broke: the deadline counts from now.
                health.alive = time.monotonic()
            if time.monotonic() - health.alive >= self.deadline:
                why = (last.details() if isinstance(last, grpc.Call) else None) or str(last)
                raise DeadlineExceeded(
                    f"the watch of run {run_id} broke and no server served it for "
                    f"{self.deadline}s; last event seen: {after}; last error: {why}"
                )
            time.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_SECONDS_MAX)

    def _silence_checked(self, stream: Any, node: int, run_id: int, health: "_Health") -> Iterator[Any]:
        """The stream's messages; when it has been silent for
        ``watch_idle_seconds``, asks the same node for the run (a
        linearizable read, which needs a leader the node can reach, even
        for a client with ``stale_reads``): a node that cannot answer
        within ``watch_probe_seconds`` (stopped, cut off from the others)
        raises :class:`_Silent`, so the watch resumes elsewhere instead of
        waiting on it forever. A stream that opens, and a node that answers
        the read, mark the watch alive (``health``)."""
        q: "queue.Queue[tuple[str, Any]]" = queue.Queue()

        def pump() -> None:
            try:
                # The server's headers came and the call goes on: open.
                stream.initial_metadata()
                if not stream.done():
                    q.put(("open", None))
                for m in stream:
                    q.put(("message", m))
                q.put(("end", None))
            except BaseException as e:  # noqa: BLE001 - handed to the reader, never lost
                q.put(("error", e))

        threading.Thread(target=pump, name=f"kaon-watch-{run_id}", daemon=True).start()
        while True:
            try:
                what, item = q.get(timeout=self.watch_idle_seconds)
            except queue.Empty:
                linearizable = [(k, v) for k, v in self._metadata() if k != READ_HEADER]
                try:
                    self._stub(node).GetRun(
                        api_pb2.GetRunRequest(run_id=run_id),
                        timeout=self.watch_probe_seconds,
                        metadata=linearizable,
                    )
                except grpc.RpcError as e:
                    raise _Silent(
                        f"{self._endpoints[node]} sent nothing for {self.watch_idle_seconds}s "
                        f"and did not answer a read: {e.details() if isinstance(e, grpc.Call) else e}"
                    ) from None
                health.alive = time.monotonic()
                continue
            if what == "open":
                health.open = True
                health.alive = time.monotonic()
            elif what == "message":
                yield item
            elif what == "end":
                return
            else:
                raise item

    def wait(self, run_id: int, *, progress: Union[bool, "Progress"] = False) -> Run:
        """Watches the run until it ends and returns it as it ended.

        ``progress=True`` shows a live progress display (bars per step in
        a terminal or notebook, a line per change elsewhere).
        """
        from kaon.progress import Progress

        display: Optional[Progress]
        if progress is True:
            display = Progress()
        elif progress is False:
            display = None
        else:
            display = progress
        final: Optional[Run] = None
        if display is not None:
            with display:
                for ev in self.watch(run_id):
                    display.update(ev.run)
                    final = ev.run
        else:
            for ev in self.watch(run_id):
                final = ev.run
        assert final is not None, f"the watch of run {run_id} ended without an event"
        return final

    def cancel(self, run_id: int, reason: str = "cancelled from the Python client") -> None:
        """Cancels a running run (its exit handler still runs)."""
        self._unary("CancelRun", api_pb2.CancelRunRequest(run_id=run_id, reason=reason))

    def retry(self, run_id: int, *, idempotency_key: Optional[str] = None) -> "RunHandle":
        """Starts a new run of a failed or cancelled run: same workflow
        version and parameters; steps that succeeded there are reused (the
        exit handler runs again: it reports the new run)."""
        req = api_pb2.RetryRunRequest(run_id=run_id, idempotency_key=idempotency_key or new_idempotency_key())
        r = self._unary("RetryRun", req)
        return RunHandle(self, r.run_id, existing=r.existing and bool(idempotency_key))

    def read_log(
        self,
        run_id: int,
        step: str,
        *,
        stream: str = "stdout",
        attempt: int = 0,
        offset: int = 0,
        max_bytes: int = 0,
    ) -> LogChunk:
        """One read of a step attempt's stdout or stderr (attempt 0 = the
        latest; a negative offset counts from the end)."""
        req = api_pb2.ReadStepLogsRequest(
            run_id=run_id, step_path=step, attempt=attempt, stream=stream, offset=offset, max_bytes=max_bytes
        )
        return LogChunk.from_proto(self._unary("ReadStepLogs", req))

    def logs(self, run_id: int, step: str, *, stream: str = "stdout", attempt: int = 0) -> str:
        """A step attempt's whole stdout (or stderr) as it stands now."""
        out = bytearray()
        offset = 0
        while True:
            c = self.read_log(run_id, step, stream=stream, attempt=attempt, offset=offset, max_bytes=LOG_READ_BYTES_MAX)
            out += c.data
            offset = c.offset + len(c.data)
            if not c.data or offset >= c.size:
                return out.decode("utf-8", errors="replace")

    # ------------------------------------------------------------ schedules, cluster

    def list_schedules(self) -> List[Schedule]:
        """Cron schedules of all registered workflows."""
        r = self._unary("ListSchedules", api_pb2.ListSchedulesRequest())
        return [Schedule.from_proto(x) for x in r.schedules]

    def pause_schedule(self, workflow: str, index: int = 0, *, paused: bool = True) -> None:
        """Pauses (or with ``paused=False`` resumes) one schedule of a workflow."""
        self._unary("SetSchedulePaused", api_pb2.SetSchedulePausedRequest(workflow=workflow, index=index, paused=paused))

    def resume_schedule(self, workflow: str, index: int = 0) -> None:
        """Resumes a paused schedule."""
        self.pause_schedule(workflow, index, paused=False)

    def cluster_status(self) -> ClusterStatus:
        """The answering node's view: leader, term, members, readiness."""
        return ClusterStatus.from_proto(self._unary("ClusterStatus", api_pb2.ClusterStatusRequest()))


class RunHandle:
    """A run by id, with the calls that concern it."""

    def __init__(self, client: Client, run_id: int, *, existing: bool = False) -> None:
        self.client = client
        #: The run's id.
        self.id = run_id
        #: True when a submit's idempotency key matched an earlier submission.
        self.existing = existing

    def __repr__(self) -> str:
        return f"RunHandle(id={self.id})"

    def get(self) -> Run:
        """The run now."""
        return self.client.get_run(self.id)

    def watch(self, *, after_index: int = 0) -> Iterator[RunEvent]:
        """See :meth:`Client.watch`."""
        return self.client.watch(self.id, after_index=after_index)

    def wait(self, *, progress: Union[bool, "Progress"] = False) -> Run:
        """See :meth:`Client.wait`."""
        return self.client.wait(self.id, progress=progress)

    def cancel(self, reason: str = "cancelled from the Python client") -> None:
        self.client.cancel(self.id, reason)

    def retry(self, *, idempotency_key: Optional[str] = None) -> "RunHandle":
        return self.client.retry(self.id, idempotency_key=idempotency_key)

    def logs(self, step: str, *, stream: str = "stdout", attempt: int = 0) -> str:
        return self.client.logs(self.id, step, stream=stream, attempt=attempt)

    @property
    def outputs(self) -> Dict[str, Dict[str, Any]]:
        """Outputs by step path, as of now."""
        return self.get().outputs


def _spec_text(workflow: WorkflowLike) -> tuple[str, Optional["Workflow"]]:
    """The spec text to send, and the DSL workflow it came from (if any)."""
    from kaon.dsl import Workflow

    if isinstance(workflow, Workflow):
        return workflow.to_json(), workflow
    if isinstance(workflow, pathlib.Path):
        return workflow.read_text(), None
    if isinstance(workflow, str):
        if _WORKFLOW_NAME.match(workflow):
            raise InvalidArgument(
                f"{workflow!r} looks like a workflow name; register takes a spec "
                "(a DSL Workflow, a dict, YAML/JSON text or a pathlib.Path)"
            )
        return workflow, None
    if isinstance(workflow, Mapping):
        return json.dumps(workflow, ensure_ascii=False), None
    raise InvalidArgument(f"not a workflow: {type(workflow).__name__}")

