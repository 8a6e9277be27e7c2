"""Client and display behaviour that needs no server."""

from __future__ import annotations

import io
from typing import Any, Iterator, List

import pytest
from rich.console import Console

from kaon import Client
from kaon.client import _Health
from kaon.models import Run, Step
from kaon.progress import Progress


def _run(status: str, message: str, steps: List[Step]) -> Run:
    return Run(id=7, workflow="w[x]", version=1, status=status, message=message, submitted=None,
               finished=None, params={}, steps=steps)


def _step(path: str, status: str, percent: int = 0, text: str = "") -> Step:
    return Step(path=path, status=status, kind="task", attempts=1, percent=percent, status_text=text,
                message="", outputs={}, depends_on=[], parent="")


@pytest.mark.parametrize("live", [True, False])
def test_the_display_shows_server_text_as_it_is(live: bool) -> None:
    out = io.StringIO()
    p = Progress(Console(file=out, force_terminal=live, width=160), live=live)
    with p:
        p.update(_run("running", "", [_step("a[0]", "running", 40, "[stage 3] map"), _step("b", "pending")]))
        # (The last state is the one a live display is sure to draw.)
        p.update(_run("failed", "cannot open [/tmp/out]",
                      [_step("a[0]", "running", 50, "[stage 3] map"), _step("b", "skipped")]))
    shown = out.getvalue()
    assert "cannot open [/tmp/out]" in shown
    assert "a[0]" in shown and "[stage 3] map" in shown
    if live:
        assert "w[x]" in shown
    else:
        assert "  running     40% a[0]: [stage 3] map" in shown.splitlines()


class _BrokenStream:
    """A stream whose reading fails with something other than an RpcError."""

    def initial_metadata(self) -> Any:
        return ()

    def done(self) -> bool:
        return False

    def __iter__(self) -> Iterator[Any]:
        raise ValueError("decoder blew up")

    def cancel(self) -> None:
        pass


def test_a_watch_reader_that_dies_reports_why_instead_of_hanging() -> None:
    c = Client("127.0.0.1:1")
    c.watch_idle_seconds = 30
    with pytest.raises(ValueError, match="decoder blew up"):
        list(c._silence_checked(_BrokenStream(), 0, 1, _Health(0.0)))
