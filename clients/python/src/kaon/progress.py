"""A live display of a run's progress, for a terminal or a notebook.

In a terminal or Jupyter, :class:`Progress` draws one bar per task step
(its status, the percent its executor reports, its status text) under a
bar for the whole run, with ``rich``. Elsewhere (a log file, CI) it prints
one line per change, as ``kaon run watch`` does.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, TaskID, TextColumn, TimeElapsedColumn
from rich.progress import Progress as _RichProgress

from kaon.models import Run

#: Step statuses that end a step.
_ENDED = frozenset({"succeeded", "failed", "failed_ignored", "skipped", "cancelled"})
_STYLE = {
    "succeeded": "green",
    "failed": "red",
    "failed_ignored": "yellow",
    "cancelled": "yellow",
    "skipped": "dim",
    "running": "cyan",
    "pending": "dim",
}


class Progress:
    """Shows a run's progress; feed it each new state with :meth:`update`.

    ``console`` defaults to standard error, as progress displays do (in a
    notebook, the cell's output); ``live=False`` forces the
    line-per-change form.
    """

    def __init__(self, console: Optional[Console] = None, *, live: Optional[bool] = None) -> None:
        if console is None:
            console = Console()
            if not console.is_jupyter:
                console = Console(stderr=True)
        self.console = console
        self.live = live if live is not None else (self.console.is_terminal or self.console.is_jupyter)
        self._bars: Optional[_RichProgress] = None
        self._tasks: Dict[str, TaskID] = {}
        self._overall: Optional[TaskID] = None
        self._seen: Dict[str, Tuple[str, int, str]] = {}
        self._last: Optional[Run] = None

    def __enter__(self) -> "Progress":
        if self.live:
            self._bars = _RichProgress(
                TextColumn("{task.description}"),
                BarColumn(),
                TextColumn("{task.percentage:>3.0f}%"),
                TextColumn("{task.fields[status]}"),
                TimeElapsedColumn(),
                console=self.console,
            )
            self._bars.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bars is not None:
            self._bars.__exit__(None, None, None)
            self._bars = None
        r = self._last
        if r is not None and r.done:
            style = _STYLE.get(r.status, "")
            # Text from the server is shown as it is, never read as markup.
            msg = f": {escape(r.message)}" if r.message else ""
            self.console.print(f"run {r.id} [{style}]{r.status}[/]{msg}", highlight=False)

    def update(self, run: Run) -> None:
        """Shows ``run`` as it stands now."""
        self._last = run
        tasks = run.tasks
        if self._bars is None:
            for s in tasks:
                text = s.status_text if s.status == "running" else ""
                now = (s.status, s.percent, text)
                if self._seen.get(s.path) != now:
                    self._seen[s.path] = now
                    shown = f" {s.percent:>3}%" if s.status == "running" and s.percent else ""
                    said = f": {escape(text)}" if text else ""
                    self.console.print(f"  {s.status:<10}{shown} {escape(s.path)}{said}", highlight=False)
            return
        done = sum(1 for s in tasks if s.status in _ENDED)
        title = f"run {run.id} {escape(run.workflow)} [{_STYLE.get(run.status, '')}]{run.status}[/]"
        if self._overall is None:
            self._overall = self._bars.add_task(title, total=max(1, len(tasks)), status="")
        self._bars.update(self._overall, description=title, completed=done, total=max(1, len(tasks)),
                          status=f"{done}/{len(tasks)} steps")
        for s in tasks:
            tid = self._tasks.get(s.path)
            if tid is None:
                # A row per step once it starts (or is skipped): rows in
                # the order things happen; pending steps are in the count.
                if s.status == "pending":
                    continue
                tid = self._bars.add_task(f"  {escape(s.path)}", total=100, status="")
                self._tasks[s.path] = tid
            pct = 100 if s.status in _ENDED else s.percent
            text = s.status_text if s.status == "running" and s.status_text else s.status
            self._bars.update(tid, completed=pct, status=f"[{_STYLE.get(s.status, '')}]{escape(text)}[/]")
