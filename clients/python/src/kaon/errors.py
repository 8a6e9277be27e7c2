"""Exceptions: every failed call raises a :class:`KaonError` subclass.

The server's message is kept word for word (it says what and where), and
``code`` is the gRPC status code name (``"INVALID_ARGUMENT"``, ...), so a
caller can branch on the class or on the code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence, Tuple

import grpc


class KaonError(Exception):
    """A kaon call failed. ``code`` is the gRPC status code's name."""

    code: str = "UNKNOWN"

    def __init__(self, message: str, code: Optional[str] = None) -> None:
        super().__init__(message)
        #: The server's message (or the client's, for local failures).
        self.message = message
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class InvalidArgument(KaonError):
    """The request was refused as malformed: a bad spec, parameter or id."""

    code = "INVALID_ARGUMENT"


class NotFound(KaonError):
    """No such run, workflow, step or schedule."""

    code = "NOT_FOUND"


class FailedPrecondition(KaonError):
    """The request does not fit the current state (e.g. retrying a running run)."""

    code = "FAILED_PRECONDITION"


class AlreadyExists(KaonError):
    """The thing to create exists (and differs)."""

    code = "ALREADY_EXISTS"


class PermissionDenied(KaonError):
    """The caller's role may not make this call (the message names the role needed)."""

    code = "PERMISSION_DENIED"


class Unauthenticated(KaonError):
    """No token, or a token the cluster does not know."""

    code = "UNAUTHENTICATED"


class Unavailable(KaonError):
    """No node answered (or none had a leader) within the call's deadline."""

    code = "UNAVAILABLE"


class DeadlineExceeded(KaonError):
    """The call's deadline passed, retries included."""

    code = "DEADLINE_EXCEEDED"


class ResourceExhausted(KaonError):
    """A named limit was hit (the message names it)."""

    code = "RESOURCE_EXHAUSTED"


_BY_CODE: Mapping[str, type[KaonError]] = {
    c.code: c
    for c in (
        InvalidArgument,
        NotFound,
        FailedPrecondition,
        AlreadyExists,
        PermissionDenied,
        Unauthenticated,
        Unavailable,
        DeadlineExceeded,
        ResourceExhausted,
    )
}


def from_rpc_error(e: grpc.RpcError) -> KaonError:
    """The :class:`KaonError` for a failed gRPC call, message kept."""
    code = e.code() if isinstance(e, grpc.Call) else None
    name = code.name if code is not None else "UNKNOWN"
    details = e.details() if isinstance(e, grpc.Call) else None
    cls = _BY_CODE.get(name, KaonError)
    return cls(details or str(e), name)


@dataclass(frozen=True)
class PythonStep:
    """A definition of a DSL workflow that an error names: usually a step,
    else a schedule, a parameter or the workflow itself (``kind``)."""

    #: Its spec path, e.g. ``steps.train.steps.validate`` or ``schedules[0]``.
    path: str
    #: Its name, e.g. ``validate``.
    name: str
    #: Where it was defined in Python, e.g. ``pipeline.py:12``.
    defined_at: str
    #: step, schedule, param or workflow.
    kind: str = "step"

    def __str__(self) -> str:
        if self.kind == "schedule":
            return f"{self.name} at {self.defined_at}"
        return f"{self.name!r} at {self.defined_at}"


@dataclass(frozen=True)
class SpecProblem:
    """One error the server found in a spec, tied to the Python steps it names."""

    #: The server's line, e.g. ``steps.train.depends_on[0]: unknown step "x"``.
    text: str
    #: The DSL steps it is about: the node its spec path names, or every
    #: step of a dependency cycle. Empty for workflow-level errors.
    steps: Tuple[PythonStep, ...] = ()

    def __str__(self) -> str:
        if not self.steps:
            return self.text
        kind = self.steps[0].kind
        label = f"Python {kind}" if len(self.steps) == 1 else f"Python {kind}s"
        return f"{self.text}  [{label} {', '.join(str(s) for s in self.steps)}]"


class SpecError(InvalidArgument):
    """The server refused a spec built with the DSL; each problem names its step.

    ``problems`` holds the server's validation errors one by one, each with
    the Python step (and the file and line where it was defined) that the
    error's spec path names.
    """

    def __init__(self, message: str, problems: Sequence[SpecProblem]) -> None:
        super().__init__(message)
        self.problems = list(problems)

    def __str__(self) -> str:
        return "INVALID_ARGUMENT: the server refused the workflow:\n" + "\n".join(
            f"  {p}" for p in self.problems
        )


# `steps.a.steps.b.run[1]: ...`, `on_exit.report: ...`, after an optional
# `line L column C: ` prefix.
_NODE_PATH = re.compile(r"^(?:line \d+ column \d+: )?((?:steps|on_exit)\.[^\s:\[]+)")


def node_path_of(line: str) -> Optional[str]:
    """The node path an error line starts with: ``steps.a.steps.b`` of
    ``steps.a.steps.b.run[1]: ...`` (field names after the node dropped)."""
    m = _NODE_PATH.match(line.strip())
    if m is None:
        return None
    parts = m.group(1).split(".")
    # steps.NAME(.steps.NAME)* ; on_exit.NAME(.steps.NAME)*
    keep = parts[:2]
    i = 2
    while i + 1 < len(parts) and parts[i] == "steps":
        keep += parts[i : i + 2]
        i += 2
    return ".".join(keep)


_CYCLE = re.compile(r"^((?:steps|on_exit)(?:\.[^\s:]+)?): dependency cycle: (.+)$")


def cycle_of(line: str) -> Optional[Tuple[str, list[str]]]:
    """``(block path, [names])`` of a ``dependency cycle: a -> b -> a`` error."""
    m = _CYCLE.match(line.strip())
    if m is None:
        return None
    names = [n.strip() for n in m.group(2).split("->")]
    return m.group(1), list(dict.fromkeys(names))
