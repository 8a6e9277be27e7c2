"""Real kaon servers for the tests: one node, and a 3-node cluster.

The ``kaon`` binary is ``$KAON_BIN`` or the workspace's
``target/debug/kaon`` (``scripts/test`` builds it first). Every process a
test starts is stopped when it ends; waits are on conditions with
deadlines, never bare sleeps.
"""

from __future__ import annotations

import os
import pathlib
import random
import shutil
import signal
import socket
import subprocess
import threading
import time
from typing import Callable, Iterator, List, Optional, Sequence, TypeVar

import pytest

from kaon import Client, KaonError

REPO = pathlib.Path(__file__).resolve().parents[3]
#: How long a server may take to start listening or a cluster to elect.
START_SECONDS_MAX = 60.0

T = TypeVar("T")


def kaon_bin() -> pathlib.Path:
    p = pathlib.Path(os.environ.get("KAON_BIN", REPO / "target" / "debug" / "kaon"))
    if not p.is_file():
        pytest.fail(f"no kaon binary at {p}: run `cargo build --bin kaon` or set KAON_BIN", pytrace=False)
    return p


def wait_for(what: str, f: Callable[[], Optional[T]], seconds: float = START_SECONDS_MAX) -> T:
    """Polls ``f`` until it returns something other than None or False."""
    deadline = time.monotonic() + seconds
    last: object = None
    while time.monotonic() < deadline:
        try:
            v = f()
            if v is not None and v is not False:
                return v
        except Exception as e:  # noqa: BLE001 - reported at the deadline
            last = e
        time.sleep(0.05)
    raise AssertionError(f"timed out after {seconds}s waiting for {what}; last error: {last!r}")


_port_lock = threading.Lock()
_next_port: List[int] = []


def free_ports(n: int) -> List[int]:
    """Ports below the kernel's ephemeral range (which it never hands to
    outgoing connections or bind(0)), each checked by binding it."""
    try:
        low = int(pathlib.Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except OSError:
        low = 32768
    out: List[int] = []
    with _port_lock:
        if not _next_port:
            # Apart from the Rust harness's counter (which starts from the pid).
            _next_port.append(random.randrange(10000, max(10001, low - 4000)))
        while len(out) < n:
            p = _next_port[0]
            _next_port[0] = p + 1 if p + 1 < low else 10000
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", p))
                except OSError:
                    continue
            out.append(p)
    return out


def _with_parent(argv: List[str]) -> List[str]:
    """``argv`` run so that it gets SIGKILL when the test process dies (even
    if it is killed): no server outlives the tests that started it.
    setpriv (util-linux) sets the signal and execs; a ``preexec_fn`` would
    run Python in a child forked from a process with gRPC's threads, which
    is not safe (a node failed to start that way)."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL", "--", *argv] if setpriv else argv


def _stop(p: subprocess.Popen[bytes], sig: int = signal.SIGTERM, grace: float = 10.0) -> None:
    if p.poll() is not None:
        return
    p.send_signal(sig)
    try:
        p.wait(grace)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


class Server:
    """One ``kaon server`` with its embedded Mesos emulator."""

    def __init__(
        self,
        data: pathlib.Path,
        args: Sequence[str] = (),
        token: Optional[str] = None,
        probe: Optional[Callable[[str], Client]] = None,
    ) -> None:
        data.mkdir(parents=True, exist_ok=True)
        self.data = data
        self.stderr = open(data / "server.stderr", "ab")
        self.proc = subprocess.Popen(
            _with_parent([str(kaon_bin()), "server", "--listen", "127.0.0.1:0", "--raft-listen", "127.0.0.1:0",
                          "--data-dir", str(data), *args]),
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            stdin=subprocess.DEVNULL,
            cwd=REPO,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode()
        prefix = "kaon server listening on "
        if not line.startswith(prefix):
            _stop(self.proc)
            raise AssertionError(f"kaon server did not start: {line!r}; log:\n{self.log()}")
        self.addr = line[len(prefix):].split()[0]
        try:
            make = probe or (lambda addr: Client(addr, deadline=2, token=token))
            wait_for("the server to be ready", lambda: make(self.addr).cluster_status().ready)
        except BaseException:
            self.stop()
            raise

    def log(self) -> str:
        return (self.data / "server.stderr").read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        _stop(self.proc)
        self.stderr.close()


class Cluster:
    """Three ``kaon server`` nodes and one ``kaon mesos-emulator``."""

    def __init__(self, root: pathlib.Path, n: int = 3) -> None:
        self.root = root
        ports = free_ports(3 * n + 1)
        self.mesos = ports.pop()
        self.api = ports[:n]
        self.raft = ports[n:2 * n]
        self.admin = ports[2 * n:]
        self.n = n
        self.nodes: List[Optional[subprocess.Popen[bytes]]] = [None] * n
        self._logs: List[object] = []
        emu_log = open(root / "mesos.stderr", "ab")
        self._logs.append(emu_log)
        self.emulator = subprocess.Popen(
            _with_parent([str(kaon_bin()), "mesos-emulator", "--master", f"127.0.0.1:{self.mesos}",
                          "--work-dir", str(root / "mesos"), "--executor-path", str(kaon_bin())]),
            stdout=subprocess.DEVNULL, stderr=emu_log, stdin=subprocess.DEVNULL, cwd=REPO,
        )
        try:
            for i in range(n):
                self.start(i)
            wait_for("a leader every node agrees on", self.leader)
        except AssertionError as e:
            logs = "\n".join(f"--- n{i + 1}:\n{self.log(i)[-1500:]}" for i in range(n))
            self.stop()
            raise AssertionError(f"{e}\n{logs}") from None
        except BaseException:
            self.stop()
            raise

    def addrs(self) -> List[str]:
        return [f"127.0.0.1:{p}" for p in self.api]

    def start(self, i: int) -> None:
        assert self.nodes[i] is None, f"node {i + 1} runs"
        log = open(self.root / f"n{i + 1}.stderr", "ab")
        self._logs.append(log)
        args = [str(kaon_bin()), "server", "--node-id", str(i + 1),
                "--listen", f"127.0.0.1:{self.api[i]}", "--raft-listen", f"127.0.0.1:{self.raft[i]}",
                "--data-dir", str(self.root / f"n{i + 1}"),
                "--mesos-master", f"http://127.0.0.1:{self.mesos}",
                "--admin-listen", f"127.0.0.1:{self.admin[i]}"]
        for j in range(self.n):
            if j != i:
                args += ["--peer", f"{j + 1}=127.0.0.1:{self.raft[j]}"]
        self.nodes[i] = subprocess.Popen(_with_parent(args), stdout=subprocess.DEVNULL, stderr=log,
                                         stdin=subprocess.DEVNULL, cwd=REPO)

    def leader(self) -> Optional[int]:
        """The node (0-based) every running node names as ready leader, if any."""
        seen = set()
        for i, p in enumerate(self.nodes):
            if p is None:
                continue
            try:
                st = Client(self.addrs()[i], deadline=1).cluster_status()
            except KaonError:
                return None
            seen.add(st.leader_id)
            if st.node_id == st.leader_id and not st.ready:
                return None
        if len(seen) != 1 or 0 in seen:
            return None
        return seen.pop() - 1

    def kill(self, i: int) -> None:
        p = self.nodes[i]
        assert p is not None
        _stop(p, signal.SIGKILL)
        self.nodes[i] = None

    def pause(self, i: int, paused: bool = True) -> None:
        """SIGSTOP (or SIGCONT) node i: its connections stay open, it answers nothing."""
        p = self.nodes[i]
        assert p is not None
        p.send_signal(signal.SIGSTOP if paused else signal.SIGCONT)

    def log(self, i: int) -> str:
        return (self.root / f"n{i + 1}.stderr").read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        for p in self.nodes:
            if p is not None:
                if p.poll() is None:
                    p.send_signal(signal.SIGCONT)
                _stop(p)
        _stop(self.emulator)
        for f in self._logs:
            f.close()  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = Server(tmp_path_factory.mktemp("kaon-server"))
    yield s
    s.stop()


@pytest.fixture(scope="session")
def client(server: Server) -> Client:
    return Client(server.addr, deadline=30)


@pytest.fixture()
def cluster(tmp_path: pathlib.Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path)
    yield c
    c.stop()


SCRIPTS = str(REPO / "examples" / "reference-pipeline" / "scripts")
