"""A Python DSL that compiles to kaon's workflow spec v1.

The DSL writes the same document a user could write in YAML (see
``Workflow.to_dict``, ``to_json``, ``to_yaml``); the server stays the one
validator, and its errors come back as :class:`~kaon.errors.SpecError`
naming the Python step (and the file and line that defined it).

Steps are created inside ``with`` blocks: the workflow's body, a
:class:`Group` (plain, ``foreach`` or ``repeat``), or the workflow's
``on_exit`` handler. Dependencies come from what a step refers to: a step
whose command, ``env``, ``when`` or ``foreach`` reads another step's
outputs (``prepare.outputs["cohort"]``) depends on it (or, across groups,
its enclosing group does), as ``depends_on`` plus the ``${{ }}``
reference. ``depends_on=`` adds dependencies that carry no data::

    from kaon.dsl import Workflow, step, Resources

    @step(kind="python", resources=Resources(cpus=1, mem="2GiB"))
    def train(data):
        return ["train.py", "--data", data]          # argv (a str = a shell line)

    with Workflow("demo") as wf:
        prepare = Step("prepare", shell="./prepare.sh")
        train(data=prepare.outputs["cohort"])          # depends_on: [prepare]
"""

from __future__ import annotations

import contextvars
import datetime
import functools
import json
import math
import os
import re
import sys
from dataclasses import dataclass, field
from typing import (
    Any,
    Generic,
    Literal,
    ParamSpec,
    TypedDict,
    Callable,
    Dict,
    Iterator,
    List,
    Mapping,
    Optional,
    Sequence,


    Union,
    overload,
)

from typing_extensions import Unpack

from kaon.errors import InvalidArgument, PythonStep, SpecError, SpecProblem, cycle_of, node_path_of

__all__ = [
    "Backoff",
    "Constraint",
    "DSLError",
    "Defaults",
    "Expr",
    "File",
    "Foreach",
    "Group",
    "INDEX",
    "ITERATION",
    "RUN",
    "Repeat",
    "Resources",
    "Retry",
    "Secret",
    "Step",
    "StepFunction",
    "Workflow",
    "step",
]

#: The spec version this DSL writes.
API_VERSION = "kaon/v1"

#: A duration: ``"90s"``, ``"10m"``, ``"2h"``, a ``timedelta``, or a number of seconds.
Duration = Union[str, int, float, datetime.timedelta]
#: Step kinds (``command`` runs ``run`` as given; the others prepend their program).
Kind = Literal["command", "python", "r", "jvm", "spark", "container"]
#: What a failure does to the run.
FailureMode = Literal["fail_fast", "finish_running", "ignore"]
#: What a schedule does when its previous run is still going.
Overlap = Literal["skip", "queue_one", "allow_all", "cancel_previous"]
#: How a loop that reached ``max_iterations`` ends.
Exhausted = Literal["fail", "succeed"]


class DSLError(ValueError):
    """A workflow definition the DSL cannot turn into a spec (e.g. a step
    created outside a ``with`` block, or two steps with one name). The
    message names the step and where it was defined."""


# ---------------------------------------------------------------- expressions

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


#: CEL's int is 64-bit.
_CEL_INT_MIN, _CEL_INT_MAX = -(2**63), 2**63 - 1


def _string(v: str) -> str:
    """A CEL string literal. ``}`` is written as ``\\u007d``: in a command a
    ``}}`` would end the ``${{ }}`` around the expression."""
    return json.dumps(v, ensure_ascii=False).replace("}", "\\u007d")


def _literal(v: Any) -> str:
    """A Python value as CEL source."""
    if isinstance(v, Expr):
        return v._operand()
    if v is True:
        return "true"
    if v is False:
        return "false"
    if v is None:
        return "null"
    if isinstance(v, int):
        if not _CEL_INT_MIN <= v <= _CEL_INT_MAX:
            raise DSLError(f"{v} does not fit CEL's 64-bit int")
        return repr(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            raise DSLError(f"{v} has no CEL literal")
        return repr(v)
    if isinstance(v, str):
        return _string(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_literal(x) for x in v) + "]"
    if isinstance(v, Mapping):
        # " }": a nested map's `}}` would end a `${{ }}` template.
        return "{" + ", ".join(f"{_literal(k)}: {_literal(x)}" for k, x in v.items()) + " }"
    raise DSLError(f"cannot use a {type(v).__name__} in an expression: {v!r}")


def _member(base: str, key: str) -> str:
    """``base.key``, or ``base['key']`` for a key that is not an identifier
    (a step name with ``-``, as the spec's README writes it)."""
    if _IDENT.match(key):
        return f"{base}.{key}"
    quoted = f"'{key}'" if "'" not in key and "\\" not in key else json.dumps(key)
    return f"{base}[{quoted}]"


class Expr:
    """A CEL expression evaluated by kaon at run time.

    In a command, ``env`` value or f-string it renders as ``${{ expr }}``;
    as ``when``, ``foreach`` items or ``repeat`` until it is the bare
    expression. Comparisons (``==``, ``<``, ...) and ``&``, ``|``, ``~``
    (and, or, not) build bigger expressions; ``expr["key"]`` reads a field.
    """

    __slots__ = ("cel", "_atomic")

    def __init__(self, cel: str, *, atomic: bool = True) -> None:
        #: The CEL source.
        self.cel = cel
        self._atomic = atomic

    def _operand(self) -> str:
        return self.cel if self._atomic else f"({self.cel})"

    def __str__(self) -> str:
        return "${{ " + self.cel + " }}"

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)

    def __repr__(self) -> str:
        return f"Expr({self.cel!r})"

    def __getitem__(self, key: Union[str, int]) -> "Expr":
        if isinstance(key, int):
            return Expr(f"{self._operand()}[{key}]")
        return Expr(_member(self._operand(), key))

    def _bin(self, op: str, other: Any, *, swap: bool = False) -> "Expr":
        a, b = self._operand(), _literal(other)
        return Expr(f"{b} {op} {a}" if swap else f"{a} {op} {b}", atomic=False)

    def __eq__(self, other: Any) -> "Expr":  # type: ignore[override]
        return self._bin("==", other)

    def __ne__(self, other: Any) -> "Expr":  # type: ignore[override]
        return self._bin("!=", other)

    def __lt__(self, other: Any) -> "Expr":
        return self._bin("<", other)

    def __le__(self, other: Any) -> "Expr":
        return self._bin("<=", other)

    def __gt__(self, other: Any) -> "Expr":
        return self._bin(">", other)

    def __ge__(self, other: Any) -> "Expr":
        return self._bin(">=", other)

    def __add__(self, other: Any) -> "Expr":
        return self._bin("+", other)

    def __radd__(self, other: Any) -> "Expr":
        return self._bin("+", other, swap=True)

    def __sub__(self, other: Any) -> "Expr":
        return self._bin("-", other)

    def __mul__(self, other: Any) -> "Expr":
        return self._bin("*", other)

    def __and__(self, other: Any) -> "Expr":
        return self._bin("&&", other)

    def __or__(self, other: Any) -> "Expr":
        return self._bin("||", other)

    def __invert__(self) -> "Expr":
        return Expr(f"!{self._operand()}")

    def contains(self, item: Any) -> "Expr":
        """``item in self`` (a list or map key)."""
        return Expr(f"{_literal(item)} in {self._operand()}", atomic=False)

    def size(self) -> "Expr":
        """``size(self)``: a list's length, a string's."""
        return Expr(f"size({self.cel})")

    __hash__ = object.__hash__

    def __iter__(self) -> Iterator["Expr"]:
        raise DSLError(
            f"{self.cel!r} is a value kaon computes at run time: it cannot be iterated or unpacked "
            "in Python; pass it as one argument, or expand a step over it with Foreach"
        )

    def __contains__(self, item: Any) -> bool:
        raise DSLError(f"{self.cel!r} is evaluated at run time: write expr.contains(item) for CEL's `in`")

    def __bool__(self) -> bool:
        raise DSLError(
            f"{self.cel!r} is evaluated by kaon at run time, not by Python: "
            "use &, | and ~ instead of and, or and not, and pass conditions as when="
        )


def _cel(v: Union["Expr", str, bool]) -> str:
    """A condition or list as CEL source (a str is taken as CEL as written)."""
    if isinstance(v, Expr):
        return v.cel
    if isinstance(v, bool):
        return "true" if v else "false"
    return v


class _Run:
    """``run.id``, ``run.workflow`` (every step); ``run.status`` and
    ``run.cancelled`` (exit handlers)."""

    id = Expr("run.id")
    workflow = Expr("run.workflow")
    #: In an exit handler: succeeded, failed or cancelled, as the run will end.
    status = Expr("run.status")
    #: In an exit handler: the run was cancelled (or its workflow timed out).
    cancelled = Expr("run.cancelled")


#: The run's own fields: ``RUN.id``, ``RUN.workflow``, ``RUN.status``, ``RUN.cancelled``.
RUN = _Run()
#: The 1-based iteration number inside a ``repeat`` group.
ITERATION = Expr("iteration")
#: The 0-based position of the current item inside a ``foreach``.
INDEX = Expr("index")


class Outputs:
    """A step's outputs, by key: ``step.outputs["cohort"]`` is an :class:`Expr`."""

    def __init__(self, node: "Node") -> None:
        self._node = node

    def __getitem__(self, key: str) -> Expr:
        return Expr(_member(f"{self._node._ref()}.outputs", key))

    def __getattr__(self, key: str) -> Expr:
        if key.startswith("_"):
            raise AttributeError(key)
        return self[key]


# ---------------------------------------------------------------- value types


def _duration(d: Optional[Duration]) -> Optional[str]:
    if d is None or isinstance(d, str):
        return d
    if isinstance(d, bool) or not isinstance(d, (int, float, datetime.timedelta)):
        raise DSLError(f"a duration is a string like '90s', a timedelta or a number of seconds, not {d!r}")
    seconds = d.total_seconds() if isinstance(d, datetime.timedelta) else float(d)
    ms = int(round(seconds * 1000))
    for unit, size in (("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms % size == 0 and ms > 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def _prune(d: Dict[str, Any]) -> Dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None and v != [] and v != {}}


@dataclass(frozen=True)
class Resources:
    """What one attempt needs: cores, memory and disk (MB, or a string with
    a unit like ``"4GiB"``), whole GPUs."""

    cpus: Optional[float] = None
    mem: Union[int, float, str, None] = None
    disk: Union[int, float, str, None] = None
    gpus: Optional[float] = None

    def to_dict(self) -> Dict[str, Any]:
        return _prune({"cpus": self.cpus, "mem": self.mem, "disk": self.disk, "gpus": self.gpus})


@dataclass(frozen=True)
class Backoff:
    """The pause between tries: ``fixed`` or ``exponential``."""

    kind: Literal["fixed", "exponential"] = "exponential"
    initial: Optional[Duration] = None
    factor: Optional[float] = None
    max: Optional[Duration] = None

    @staticmethod
    def fixed(initial: Duration) -> "Backoff":
        return Backoff("fixed", initial)

    @staticmethod
    def exponential(
        initial: Duration,
        *,
        max: Optional[Duration] = None,
        factor: Optional[float] = None,
    ) -> "Backoff":
        return Backoff("exponential", initial, factor, max)

    def to_dict(self) -> Dict[str, Any]:
        return _prune(
            {"kind": self.kind, "initial": _duration(self.initial), "factor": self.factor, "max": _duration(self.max)}
        )


@dataclass(frozen=True)
class Retry:
    """Separate retry budgets per kind of failure (see the spec's ``retry``)."""

    user_errors: Optional[int] = None
    platform_errors: Optional[int] = None
    timeouts: Optional[int] = None
    backoff: Optional[Backoff] = None

    def to_dict(self) -> Dict[str, Any]:
        return _prune(
            {
                "user_errors": self.user_errors,
                "platform_errors": self.platform_errors,
                "timeouts": self.timeouts,
                "backoff": self.backoff.to_dict() if self.backoff else None,
            }
        )


@dataclass(frozen=True)
class Secret:
    """An environment value read on the agent from a named secret (never in
    the spec, the log or the API)."""

    name: str


@dataclass(frozen=True)
class File:
    """A file fetched into the step's sandbox before it starts."""

    uri: str
    executable: bool = False
    extract: bool = True

    def to_dict(self) -> Dict[str, Any]:
        d: Dict[str, Any] = {"uri": self.uri}
        if self.executable:
            d["executable"] = True
        if not self.extract:
            d["extract"] = False
        return d


@dataclass(frozen=True)
class Constraint:
    """Run only on agents whose attribute equals a value or matches a regex."""

    attribute: str
    equals: Optional[str] = None
    like: Optional[str] = None

    def to_dict(self) -> Dict[str, Any]:
        return _prune({"attribute": self.attribute, "equals": self.equals, "like": self.like})


@dataclass(frozen=True)
class Defaults:
    """What every step inherits unless it says otherwise."""

    resources: Optional[Resources] = None
    retry: Optional[Retry] = None
    timeout: Optional[Duration] = None
    env: Mapping[str, Union[str, Expr, Secret]] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        return _prune(
            {
                "resources": self.resources.to_dict() if self.resources else None,
                "retry": self.retry.to_dict() if self.retry else None,
                "timeout": _duration(self.timeout),
                "env": _env(self.env),
            }
        )


class Foreach:
    """Expand a node once per element of a list known at run time.

    ``items`` is usually another step's output (``prepare.outputs["regions"]``)
    or a parameter; a Python list is written as a CEL list. Use ``.item``
    (named ``as_``) and ``.index`` in the node's command.
    """

    def __init__(
        self,
        items: Union[Expr, str, Sequence[Any]],
        *,
        as_: Optional[str] = None,
        max_concurrency: Optional[int] = None,
        max_items: Optional[int] = None,
    ) -> None:
        if isinstance(items, Expr):
            self.items = items.cel
        elif isinstance(items, str):
            self.items = items
        else:
            self.items = _literal(list(items))
        self.as_ = as_
        self.max_concurrency = max_concurrency
        self.max_items = max_items

    @property
    def item(self) -> Expr:
        """The current element (``${{ item }}`` or the ``as_`` name)."""
        return Expr(self.as_ or "item")

    @property
    def index(self) -> Expr:
        return INDEX

    def to_dict(self) -> Dict[str, Any]:
        return _prune(
            {"items": self.items, "as": self.as_, "max_concurrency": self.max_concurrency, "max_items": self.max_items}
        )


class Repeat:
    """Run a group's steps again until ``until`` holds, at most
    ``max_iterations`` times. ``until`` may be a function returning the
    condition, so it can name steps defined later inside the group."""

    def __init__(
        self,
        until: Union[Expr, str, Callable[[], Union[Expr, str]]],
        *,
        max_iterations: int,
        on_max_iterations: Optional[Exhausted] = None,
    ) -> None:
        self.until = until
        self.max_iterations = max_iterations
        self.on_max_iterations = on_max_iterations

    def condition(self) -> str:
        u = self.until() if callable(self.until) else self.until
        return _cel(u)

    def to_dict(self) -> Dict[str, Any]:
        return _prune(
            {
                "until": self.condition(),
                "max_iterations": self.max_iterations,
                "on_max_iterations": self.on_max_iterations,
            }
        )


def _env(env: Mapping[str, Union[str, Expr, Secret, int, float, bool]]) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for k, v in env.items():
        if v is None or not isinstance(v, (str, Expr, Secret, int, float, bool)):
            raise DSLError(f"env {k}: a value is text, a number, a bool, an expression or Secret(name), not {v!r}")
        if isinstance(v, Secret):
            out[k] = {"secret": v.name}
        elif isinstance(v, bool):
            out[k] = "true" if v else "false"
        else:
            out[k] = str(v)
    return out


# ---------------------------------------------------------------- nodes and scopes

_SCOPE: contextvars.ContextVar[Optional["_Scope"]] = contextvars.ContextVar("kaon_dsl_scope", default=None)

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def _caller() -> str:
    """``file:line`` of the first frame outside this package."""
    f = sys._getframe(1)
    while f is not None and os.path.dirname(os.path.abspath(f.f_code.co_filename)) == _PACKAGE_DIR:
        f = f.f_back  # type: ignore[assignment]
    if f is None:
        return "?"
    name = f.f_code.co_filename
    if not name.startswith("<"):
        rel = os.path.relpath(name)
        name = name if rel.startswith("..") else rel
    return f"{name}:{f.f_lineno}"


class _Scope:
    """A block of sibling nodes: the body, an exit handler or a group."""

    def __init__(self, owner: Union["Workflow", "Group"], label: str) -> None:
        self.owner = owner
        #: The workflow the block belongs to.
        self.workflow: Workflow = owner if isinstance(owner, Workflow) else owner.scope.workflow
        #: The spec path prefix of this block's nodes, e.g. ``steps.train.steps``.
        self.label = label
        self.nodes: Dict[str, "Node"] = {}
        self._tokens: List[contextvars.Token[Optional[_Scope]]] = []

    def add(self, node: "Node", *, unique: bool) -> str:
        name = node.name
        if not unique:
            # A generated name is new in the whole workflow, so it never
            # hides (or is hidden by) a step of an enclosing block.
            taken = {n.name for n in self.workflow.nodes()}
            if name in taken:
                n = 2
                while f"{name}-{n}" in taken:
                    n += 1
                name = f"{name}-{n}"
        elif name in self.nodes:
            other = self.nodes[name]
            raise DSLError(
                f"{self.label}.{name}: a step named {name!r} is already defined here "
                f"(at {other.defined_at}); the second one is at {node.defined_at}"
            )
        self.nodes[name] = node
        return name

    def enclosing(self) -> Optional["_Scope"]:
        """The block around this one (None for the body and exit handler)."""
        return self.owner.scope if isinstance(self.owner, Node) else None

    def enter(self) -> None:
        self._tokens.append(_SCOPE.set(self))

    def exit(self) -> None:
        _SCOPE.reset(self._tokens.pop())


# `steps.NAME` / `steps['NAME']` (not `params.steps.x`, `mysteps.x`, or
# text inside a string literal such as "steps.b").
_CEL_TOKEN = re.compile(
    r"""(?<![\w.])steps\s*\[\s*(?:'([^'\\]*)'|"([^"\\]*)")\s*\]"""
    r"""|'(?:[^'\\]|\\.)*'""" r'|"(?:[^"\\]|\\.)*"'
    r"""|(?<![\w.])steps\.([A-Za-z_][A-Za-z0-9_]*)"""
)
_TEMPLATE = re.compile(r"\$\{\{(.*?)\}\}", re.S)


def _refs_in_cel(text: str) -> List[str]:
    return [n for m in _CEL_TOKEN.finditer(text) for n in (m.group(1) or m.group(2) or m.group(3),) if n]


def _refs_in_template(text: str) -> List[str]:
    return [r for m in _TEMPLATE.finditer(text) for r in _refs_in_cel(m.group(1))]


class Node:
    """A step or a group in a workflow (created inside a ``with`` block)."""

    def __init__(
        self,
        name: str,
        *,
        depends_on: Union["Node", str, Sequence[Union["Node", str]]] = (),
        when: Union[Expr, str, bool, None] = None,
        foreach: Optional[Foreach] = None,
        on_failure: Optional[FailureMode] = None,
        _unique: bool = True,
        _defined_at: Optional[str] = None,
    ) -> None:
        scope = _SCOPE.get()
        self.defined_at = _defined_at or _caller()
        if scope is None:
            raise DSLError(
                f"step {name!r} (at {self.defined_at}) is created outside a workflow: "
                "create steps inside `with Workflow(...):`, a `with Group(...):` or `with wf.on_exit:`"
            )
        if not isinstance(name, str) or not name:
            raise DSLError(f"a step needs a name (at {self.defined_at})")
        self.name = name
        self.scope = scope
        self._unique = _unique
        if isinstance(depends_on, (Node, str)):
            depends_on = [depends_on]
        self.depends_on: List[Union[Node, str]] = list(depends_on)
        self.when = when
        self.foreach = foreach
        self.on_failure = on_failure
        #: Steps this node refers to through arguments (decorated steps).
        self._arg_refs: List[str] = []
        #: depends_on as compiled (explicit, then inferred); set by Workflow.to_dict.
        self._computed: List[str] = []

    def _register(self) -> None:
        """Adds the node to its block, once it is whole (a refused
        definition leaves nothing behind)."""
        self.name = self.scope.add(self, unique=self._unique)

    @property
    def path(self) -> str:
        """The node's path in the spec, e.g. ``steps.train.steps.validate``."""
        return f"{self.scope.label}.{self.name}"

    def _ref(self) -> str:
        return _member("steps", self.name)

    @property
    def outputs(self) -> Outputs:
        """This node's outputs: ``node.outputs["key"]`` (or ``.outputs.key``)."""
        return Outputs(self)

    @property
    def status(self) -> Expr:
        """This node's status as an expression (e.g. ``when=a.status == "failed"``)."""
        return Expr(f"{self._ref()}.status")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path!r})"

    def __rshift__(self, other: Union["Node", Sequence["Node"]]) -> Union["Node", Sequence["Node"]]:
        """``a >> b``: b depends on a (b may be a list)."""
        for o in [other] if isinstance(other, Node) else other:
            o.depends_on.append(self)
        return other

    # ---- compile

    def _own_refs(self) -> List[str]:
        """Names of the steps its fields refer to (``steps.NAME``)."""
        out = list(self._arg_refs)
        if self.when is not None:
            out += _refs_in_cel(_cel(self.when))
        if self.foreach is not None:
            out += _refs_in_cel(self.foreach.items)
        return out

    def _add_dependency(self, name: str) -> None:
        if name != self.name and name not in self._computed:
            self._computed.append(name)

    def _sibling_ancestor(self, scope: _Scope) -> Optional["Node"]:
        """This node, or the ancestor of it, that sits in ``scope`` (None if none)."""
        n: Optional[Node] = self
        while n is not None:
            if n.scope is scope:
                return n
            owner = n.scope.owner
            n = owner if isinstance(owner, Node) else None
        return None

    def _lift_dependencies(self, *, infer: bool) -> None:
        """Adds what this node's dependencies and references need, to it or,
        for a step outside its own block, to its ancestor in that step's
        block (the validator's rule: a referenced step must be upstream at
        the level where the name is found)."""
        for d in self.depends_on:
            if isinstance(d, str):
                self._add_dependency(d)
                continue
            a = self._sibling_ancestor(d.scope)
            if a is None:
                # Not visible from here: written as given, the server says why.
                self._add_dependency(d.name)
            elif a is d and d is not self:
                raise DSLError(
                    f"{self.path} (at {self.defined_at}): depends on {d.path}, the group it is in; "
                    "a step runs as part of its group"
                )
            elif a is not d:
                a._add_dependency(d.name)
        for r in self._own_refs() if infer else ():
            s: Optional[_Scope] = self.scope
            while s is not None:
                if r in s.nodes:
                    self._check_not_shadowing(r, s)
                    a = self._sibling_ancestor(s)
                    if a is not None and a is not s.nodes[r]:
                        a._add_dependency(r)
                    break
                s = s.enclosing()

    def _check_not_shadowing(self, name: str, found: _Scope) -> None:
        """``steps.NAME`` means the innermost step of that name; when an
        outer block has one too, which one the author meant is a guess:
        refuse."""
        outer = found.enclosing()
        while outer is not None:
            if name in outer.nodes:
                inner, hidden = found.nodes[name], outer.nodes[name]
                raise DSLError(
                    f"{self.path} (at {self.defined_at}): steps.{name} names {inner.path} "
                    f"(at {inner.defined_at}), which hides {hidden.path} (at {hidden.defined_at}) "
                    "from here: give one of them another name"
                )
            outer = outer.enclosing()

    def _base_dict(self) -> Dict[str, Any]:
        d: Dict[str, Any] = {}
        if self._computed:
            d["depends_on"] = list(self._computed)
        if self.when is not None:
            d["when"] = _cel(self.when)
        if self.foreach is not None:
            d["foreach"] = self.foreach.to_dict()
        return d

    def to_dict(self) -> Dict[str, Any]:
        raise NotImplementedError

    def _walk(self) -> Iterator["Node"]:
        yield self


class Step(Node):
    """A step: a command (``run`` argv or a ``shell`` line) of some kind.

    Kinds: ``command`` (default), ``python``, ``r``, ``jvm``, ``spark``,
    ``container`` (with ``image``). Anything in ``run``, ``shell`` or
    ``env`` may be an :class:`Expr` or an f-string with one.
    """

    def __init__(
        self,
        name: str,
        *,
        run: Optional[Sequence[Any]] = None,
        shell: Union[str, Expr, None] = None,
        kind: Optional[Kind] = None,
        image: Optional[str] = None,
        env: Optional[Mapping[str, Union[str, Expr, Secret, int, float, bool]]] = None,
        secrets: Sequence[str] = (),
        files: Sequence[Union[File, str]] = (),
        resources: Union[Resources, Mapping[str, Any], None] = None,
        constraints: Sequence[Constraint] = (),
        retry: Optional[Retry] = None,
        timeout: Optional[Duration] = None,
        depends_on: Union["Node", str, Sequence[Union["Node", str]]] = (),
        when: Union[Expr, str, bool, None] = None,
        foreach: Optional[Foreach] = None,
        on_failure: Optional[FailureMode] = None,
        _unique: bool = True,
        _defined_at: Optional[str] = None,
    ) -> None:
        super().__init__(
            name,
            depends_on=depends_on,
            when=when,
            foreach=foreach,
            on_failure=on_failure,
            _unique=_unique,
            _defined_at=_defined_at,
        )
        try:
            if (run is None) == (shell is None):
                raise DSLError("give a step exactly one of run= (argv) or shell=")
            if isinstance(run, (str, bytes)):
                raise DSLError("run= is an argv list; for a command line use shell=")
            _env(env or {})
            _duration(timeout)
            self.run = [str(a) for a in run] if run is not None else None
            self.shell = str(shell) if shell is not None else None
            self.kind = kind
            self.image = image
            self.env = dict(env or {})
            self.secrets = list(secrets)
            self.files = [File(f) if isinstance(f, str) else f for f in files]
            self.resources = Resources(**resources) if isinstance(resources, Mapping) else resources
            self.constraints = list(constraints)
            self.retry = retry
            self.timeout = timeout
        except (DSLError, TypeError, ValueError) as e:
            raise DSLError(f"{self.path} (at {self.defined_at}): {e}") from None
        self._register()

    def _own_refs(self) -> List[str]:
        out = super()._own_refs()
        texts = list(self.run or []) + ([self.shell] if self.shell else [])
        texts += [str(v) for v in self.env.values() if not isinstance(v, Secret)]
        return out + [r for t in texts for r in _refs_in_template(t)]

    def to_dict(self) -> Dict[str, Any]:
        d = self._base_dict()
        if self.kind is not None:
            d["kind"] = self.kind
        if self.run is not None:
            d["run"] = list(self.run)
        if self.shell is not None:
            d["shell"] = self.shell
        if self.env:
            d["env"] = _env(self.env)
        if self.secrets:
            d["secrets"] = list(self.secrets)
        if self.files:
            d["files"] = [f.to_dict() for f in self.files]
        if self.image is not None:
            d["image"] = self.image
        if self.resources is not None:
            d["resources"] = self.resources.to_dict()
        if self.constraints:
            d["constraints"] = [c.to_dict() for c in self.constraints]
        if self.retry is not None:
            d["retry"] = self.retry.to_dict()
        if self.timeout is not None:
            d["timeout"] = _duration(self.timeout)
        if self.on_failure is not None:
            d["on_failure"] = self.on_failure
        return d


class Group(Node):
    """A group of steps, used as a context manager: steps created in its
    ``with`` block belong to it. With ``repeat=`` it is a bounded loop,
    with ``foreach=`` it is expanded per item."""

    def __init__(
        self,
        name: str,
        *,
        repeat: Optional[Repeat] = None,
        depends_on: Union["Node", str, Sequence[Union["Node", str]]] = (),
        when: Union[Expr, str, bool, None] = None,
        foreach: Optional[Foreach] = None,
        on_failure: Optional[FailureMode] = None,
    ) -> None:
        super().__init__(name, depends_on=depends_on, when=when, foreach=foreach, on_failure=on_failure)
        self.repeat = repeat
        self._register()
        self.body = _Scope(self, f"{self.path}.steps")

    def __enter__(self) -> "Group":
        self.body.enter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.body.exit()

    def repeat_until(
        self, until: Union[Expr, str], *, max_iterations: int, on_max_iterations: Optional[Exhausted] = None
    ) -> "Group":
        """Makes this group a loop (after its steps are defined, so
        ``until`` can name them)."""
        self.repeat = Repeat(until, max_iterations=max_iterations, on_max_iterations=on_max_iterations)
        return self

    def _own_refs(self) -> List[str]:
        out = super()._own_refs()
        # `until` sees the group's own children: no dependency for those.
        if self.repeat is not None:
            out += [r for r in _refs_in_cel(self.repeat.condition()) if r not in self.body.nodes]
        return out

    def to_dict(self) -> Dict[str, Any]:
        d = self._base_dict()
        if self.on_failure is not None:
            d["on_failure"] = self.on_failure
        if not self.body.nodes:
            raise DSLError(f"{self.path} (at {self.defined_at}): a group needs at least one step")
        d["steps"] = {n: node.to_dict() for n, node in self.body.nodes.items()}
        if self.repeat is not None:
            d["repeat"] = self.repeat.to_dict()
        return d

    def _walk(self) -> Iterator[Node]:
        yield self
        for n in self.body.nodes.values():
            yield from n._walk()


class _ExitHandler:
    def __init__(self, wf: "Workflow") -> None:
        self._wf = wf

    def __enter__(self) -> "Workflow":
        self._wf._exit.enter()
        return self._wf

    def __exit__(self, *exc: object) -> None:
        self._wf._exit.exit()


@dataclass
class _Schedule:
    defined_at: str
    cron: str
    timezone: Optional[str]
    overlap: Optional[str]
    catchup_window: Optional[Duration]
    params: Dict[str, Any]
    paused: bool

    def to_dict(self) -> Dict[str, Any]:
        d = _prune(
            {
                "cron": self.cron,
                "timezone": self.timezone,
                "overlap": self.overlap,
                "catchup_window": _duration(self.catchup_window),
                "params": self.params,
            }
        )
        if self.paused:
            d["paused"] = True
        return d


_PARAM_TYPES: Mapping[Any, str] = {
    str: "string",
    int: "int",
    float: "float",
    bool: "bool",
    list: "list",
    dict: "map",
}


class Workflow:
    """A workflow definition; ``with wf:`` collects its steps.

    ``to_dict()`` is the spec v1 document (``to_json``, ``to_yaml``), which
    :meth:`kaon.Client.register` and :meth:`kaon.Client.submit` send.
    """

    def __init__(
        self,
        name: str,
        *,
        description: Optional[str] = None,
        defaults: Optional[Defaults] = None,
        timeout: Optional[Duration] = None,
        on_failure: Optional[FailureMode] = None,
        infer_dependencies: bool = True,
    ) -> None:
        self.name = name
        #: A step that refers to another's outputs depends on it (or its
        #: enclosing group does). False: only ``depends_on=`` counts, and
        #: the server refuses a reference to a step that is not upstream.
        self.infer_dependencies = infer_dependencies
        self.description = description
        self.defaults = defaults
        self.timeout = timeout
        self.on_failure = on_failure
        self._params: Dict[str, Dict[str, Any]] = {}
        self._param_sites: Dict[str, str] = {}
        #: Where the workflow was created (``file:line``).
        self.defined_at = _caller()
        _duration(timeout)
        self._body = _Scope(self, "steps")
        self._exit = _Scope(self, "on_exit")
        self._schedules: List[_Schedule] = []

    def __enter__(self) -> "Workflow":
        self._body.enter()
        return self

    def __exit__(self, *exc: object) -> None:
        self._body.exit()

    @property
    def on_exit(self) -> _ExitHandler:
        """``with wf.on_exit:`` collects the exit handler's steps (they run
        after the body ends, whatever its result; ``RUN.status`` tells it)."""
        return _ExitHandler(self)

    def param(
        self,
        name: str,
        type: Union[type, str] = str,
        *,
        default: Any = None,
        description: Optional[str] = None,
    ) -> Expr:
        """Declares a parameter (required unless it has a default) and
        returns it as an expression (``${{ params.NAME }}`` in commands)."""
        ty = type if isinstance(type, str) else _PARAM_TYPES.get(type)
        if ty is None:
            raise DSLError(f"param {name!r}: type must be one of str, int, float, bool, list, dict (got {type!r})")
        p: Dict[str, Any] = {"type": ty}
        if default is not None:
            p["default"] = default
        if description is not None:
            p["description"] = description
        self._params[name] = p
        self._param_sites[name] = _caller()
        return Expr(_member("params", name))

    @property
    def params(self) -> "_Params":
        """Declared parameters as expressions: ``wf.params["epochs"]``."""
        return _Params(self)

    def schedule(
        self,
        cron: str,
        *,
        timezone: Optional[str] = None,
        overlap: Optional[Overlap] = None,
        catchup_window: Optional[Duration] = None,
        params: Optional[Mapping[str, Any]] = None,
        paused: bool = False,
    ) -> "Workflow":
        """Adds a cron schedule (active once the workflow is registered)."""
        _duration(catchup_window)
        self._schedules.append(
            _Schedule(_caller(), cron, timezone, overlap, catchup_window, dict(params or {}), paused)
        )
        return self

    def nodes(self) -> Iterator[Node]:
        """Every node, depth first, body then exit handler."""
        for scope in (self._body, self._exit):
            for n in scope.nodes.values():
                yield from n._walk()

    def to_dict(self) -> Dict[str, Any]:
        """The spec v1 document."""
        nodes = list(self.nodes())
        for n in nodes:
            n._computed = []
        for n in nodes:
            n._lift_dependencies(infer=self.infer_dependencies)
        d: Dict[str, Any] = {"apiVersion": API_VERSION, "kind": "Workflow", "name": self.name}
        if self.description is not None:
            d["description"] = self.description
        if self._params:
            d["params"] = {k: dict(v) for k, v in self._params.items()}
        if self.defaults is not None:
            d["defaults"] = self.defaults.to_dict()
        d["steps"] = {n: node.to_dict() for n, node in self._body.nodes.items()}
        if self._exit.nodes:
            d["on_exit"] = {n: node.to_dict() for n, node in self._exit.nodes.items()}
        if self.timeout is not None:
            d["timeout"] = _duration(self.timeout)
        if self.on_failure is not None:
            d["on_failure"] = self.on_failure
        if self._schedules:
            d["schedules"] = [s.to_dict() for s in self._schedules]
        return d

    def to_json(self, *, indent: Optional[int] = None) -> str:
        # UTF-8 as it is: the server's YAML reader refuses JSON's surrogate
        # pair escapes (\\ud83d\\ude00) for characters beyond the BMP.
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False)

    def to_yaml(self) -> str:
        import yaml

        return str(yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True))

    def explain(self, error: InvalidArgument) -> SpecError:
        """The server's refusal of this workflow, each error tied to the
        Python definition it is about: the step its spec path names (or
        every step of a cycle), a schedule, a parameter, or the workflow."""
        by_path = {n.path: n for n in self.nodes()}

        def ref(n: Node) -> PythonStep:
            return PythonStep(n.path, n.name, n.defined_at)

        problems = []
        for line in split_spec_errors(error.message):
            # The server parsed the JSON the DSL wrote: a line and column
            # there mean nothing to the Python author; the path does.
            line = _POSITION.sub("", line, count=1)
            steps: List[PythonStep] = []
            cycle = cycle_of(line)
            if cycle is not None:
                block, names = cycle
                steps = [ref(by_path[f"{block}.{n}"]) for n in names if f"{block}.{n}" in by_path]
            path = node_path_of(line)
            # The deepest node the path names.
            while path and not steps:
                node = by_path.get(path)
                if node is not None:
                    steps = [ref(node)]
                path = path.rsplit(".", 2)[0] if path.count(".") >= 3 else None
            if not steps:
                steps = self._other_site(line)
            problems.append(SpecProblem(text=line, steps=tuple(steps)))
        return SpecError(error.message, problems)

    def _other_site(self, line: str) -> List[PythonStep]:
        """A schedule, a parameter or the workflow itself, for an error
        about no step."""
        m = re.match(r"schedules\[(\d+)\]", line)
        if m and int(m.group(1)) < len(self._schedules):
            i = int(m.group(1))
            return [PythonStep(f"schedules[{i}]", str(i), self._schedules[i].defined_at, "schedule")]
        m = re.match(r"params\.([A-Za-z0-9_-]+)", line)
        if m and m.group(1) in self._param_sites:
            return [PythonStep(f"params.{m.group(1)}", m.group(1), self._param_sites[m.group(1)], "param")]
        if re.match(r"(?:apiVersion|kind|name|description|defaults|timeout|on_failure|params)\b", line):
            return [PythonStep("", self.name, self.defined_at, "workflow")]
        return []


_POSITION = re.compile(r"^line \d+ column \d+: ")


class _Params:
    def __init__(self, wf: Workflow) -> None:
        self._wf = wf

    def __getitem__(self, key: str) -> Expr:
        if key not in self._wf._params:
            raise DSLError(f"workflow {self._wf.name!r} has no param {key!r}; declared: {sorted(self._wf._params)}")
        return Expr(_member("params", key))

    def __getattr__(self, key: str) -> Expr:
        if key.startswith("_"):
            raise AttributeError(key)
        return self[key]


_TOP_KEYS = r"(?:apiVersion|kind|name|description|params|defaults|templates|steps|on_exit|timeout|on_failure|schedules)"
_SPLIT = re.compile(r"; (?=(?:line \d+ column \d+: )?" + _TOP_KEYS + r"\b[^\s:]*: )")


def split_spec_errors(message: str) -> List[str]:
    """The server's ``invalid spec: e1; e2`` as ``[e1, e2]``."""
    m = message
    for prefix in ("invalid spec: ", "invalid argument: "):
        if m.startswith(prefix):
            m = m[len(prefix) :]
            break
    return [p for p in _SPLIT.split(m) if p]


# ---------------------------------------------------------------- decorated steps


#: What a step function returns: an argv list, or a shell line.
Command = Union[Sequence[Any], str]

P = ParamSpec("P")


class StepOptions(TypedDict, total=False):
    """What ``@step(...)`` and ``with_options(...)`` take: :class:`Step`'s
    keyword arguments."""

    name: str
    kind: Kind
    image: str
    env: Mapping[str, Union[str, Expr, Secret, int, float, bool]]
    secrets: Sequence[str]
    files: Sequence[Union[File, str]]
    resources: Union[Resources, Mapping[str, Any]]
    constraints: Sequence[Constraint]
    retry: Retry
    timeout: Duration
    depends_on: Union[Node, str, Sequence[Union[Node, str]]]
    when: Union[Expr, str, bool]
    foreach: Foreach
    on_failure: FailureMode


class StepFunction(Generic[P]):
    """A Python function that returns a step's command, made a step by
    :func:`step`. Calling it inside a workflow adds a step (named after
    the function; a second call gets a name new in the workflow, ``-2``,
    ...) and returns it; its arguments can be other steps' outputs,
    parameters or plain values, and any step they name becomes a
    dependency. Type checkers see the function's own parameters."""

    def __init__(self, fn: Callable[P, Command], options: Dict[str, Any]) -> None:
        self.fn = fn
        self.options = options
        functools.update_wrapper(self, fn)

    def with_options(self, **options: Unpack[StepOptions]) -> "StepFunction[P]":
        """The same step with other options (those given replace the
        decorator's)."""
        return StepFunction(self.fn, {**self.options, **_checked_options(dict(options))})

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Step:
        defined_at = _caller()
        command = self.fn(*args, **kwargs)
        opts = dict(self.options)
        name = opts.pop("name", None)
        unique = name is not None
        deps = opts.pop("depends_on", ())
        extra_deps: List[Union[Node, str]] = [deps] if isinstance(deps, (Node, str)) else list(deps)
        arg_refs: List[str] = []
        for a in list(args) + list(kwargs.values()):
            if isinstance(a, Node):
                extra_deps.append(a)
            elif isinstance(a, Expr):
                arg_refs += _refs_in_cel(a.cel)
        fn_name = getattr(self.fn, "__name__", "step")
        if isinstance(command, (str, Expr)):
            s = Step(
                name or fn_name,
                shell=command,
                depends_on=extra_deps,
                _unique=unique,
                _defined_at=defined_at,
                **opts,
            )
        elif isinstance(command, Sequence):
            s = Step(
                name or fn_name,
                run=list(command),
                depends_on=extra_deps,
                _unique=unique,
                _defined_at=defined_at,
                **opts,
            )
        else:
            raise DSLError(
                f"step function {fn_name} (called at {defined_at}) must return "
                f"an argv list or a shell line, not {type(command).__name__}"
            )
        s._arg_refs = arg_refs
        return s


@overload
def step(fn: Callable[P, Command]) -> StepFunction[P]: ...


@overload
def step(fn: None = None, **options: Unpack[StepOptions]) -> Callable[[Callable[P, Command]], StepFunction[P]]: ...


def step(
    fn: Optional[Callable[P, Command]] = None, **options: Any
) -> Union[StepFunction[P], Callable[[Callable[P, Command]], StepFunction[P]]]:
    """Makes a function that returns a command (an argv list, or a str for
    a shell line) into a step. Options are :class:`Step`'s keyword
    arguments (``kind``, ``resources``, ``retry``, ``timeout``, ``when``,
    ``foreach``, ``env``, ``image``, ``name``, ...); an unknown one is
    refused when the function is decorated."""
    opts = _checked_options(options)
    if fn is not None:
        return StepFunction(fn, opts)

    def wrap(f: Callable[P, Command]) -> StepFunction[P]:
        return StepFunction(f, opts)

    return wrap


def _checked_options(options: Dict[str, Any]) -> Dict[str, Any]:
    unknown = sorted(set(options) - set(StepOptions.__annotations__))
    if unknown:
        raise DSLError(
            f"@step at {_caller()}: unknown option(s) {unknown}; options are {sorted(StepOptions.__annotations__)}"
        )
    return {k: v for k, v in options.items() if v is not None}
