"""kaon: a Python client and workflow DSL for the kaon orchestrator.

- :class:`Client` talks to a kaon server or cluster (failover, deadlines,
  idempotent submits) and returns plain Python data (:mod:`kaon.models`).
- :mod:`kaon.dsl` defines workflows in Python and compiles them to the
  spec v1 document the server validates and runs.
- :class:`~kaon.progress.Progress` shows a run's progress in a terminal
  or notebook (``client.wait(run_id, progress=True)``).

The gRPC stubs (``kaon.v1.api_pb2``, ``kaon.events.v1.events_pb2``) are
generated from the repository's ``proto/`` when the package is built.
"""

from kaon.client import Client, RunHandle, new_idempotency_key
from kaon.dsl import (
    INDEX,
    ITERATION,
    RUN,
    Backoff,
    Constraint,
    Defaults,
    DSLError,
    Expr,
    File,
    Foreach,
    Group,
    Repeat,
    Resources,
    Retry,
    Secret,
    Step,
    Workflow,
    step,
)
from kaon.errors import (
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    KaonError,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    SpecError,
    Unauthenticated,
    Unavailable,
)
from kaon.models import Attempt, ClusterStatus, Run, RunEvent, RunSummary, Step as StepState

__version__ = "0.1.0"

__all__ = [
    "AlreadyExists",
    "Attempt",
    "Backoff",
    "Client",
    "ClusterStatus",
    "Constraint",
    "DSLError",
    "DeadlineExceeded",
    "Defaults",
    "Expr",
    "FailedPrecondition",
    "File",
    "Foreach",
    "Group",
    "INDEX",
    "ITERATION",
    "InvalidArgument",
    "KaonError",
    "NotFound",
    "PermissionDenied",
    "RUN",
    "Repeat",
    "ResourceExhausted",
    "Resources",
    "Retry",
    "Run",
    "RunEvent",
    "RunHandle",
    "RunSummary",
    "Secret",
    "SpecError",
    "Step",
    "StepState",
    "Unauthenticated",
    "Unavailable",
    "Workflow",
    "new_idempotency_key",
    "step",
]
