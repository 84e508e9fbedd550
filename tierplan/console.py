"""The one place tierplan makes a rich Console: the terminal's width on a terminal, the width a table needs elsewhere.

Piped or logged output (a file, `| less`, CI logs) has no width to fit, and rich's default of
80 columns crushes tables: identifiers wrap over several lines and headers are cut to "…".
So when the stream is not a terminal the Console is `PIPE_WIDTH` wide: tables (which never
expand) take the width they need and a line of prose stays one line. `TIERPLAN_WIDTH` sets
another width for such streams. On a terminal the terminal's width is kept.

Tables add their columns with `column()` (identifiers never wrap, a header word is never cut)
and are printed with `print_table()`: a table wider than a narrow terminal first drops its
borders, and if it still does not fit it is printed whole (the terminal wraps the long lines)
rather than cropped or cut to "…".

Progress bars (`progress()`) go to stderr, so stdout stays the result: on a terminal they redraw
in place; a stream that is not a terminal gets one plain line per update (at most every
`LOG_EVERY_S`) and the final state, when `--progress` asks for them there.
"""

from __future__ import annotations

import os
import sys
import threading
from contextlib import contextmanager
from typing import IO, Any, Callable, Iterator, Literal, Protocol, cast

from rich import box
from rich.console import Console, JustifyMethod
from rich.measure import Measurement
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn,
                           TimeElapsedColumn)
from rich.progress_bar import ProgressBar
from rich.table import Table

__all__ = ["console", "column", "print_table", "PIPE_WIDTH", "progress", "progress_wanted", "ClockBar",
           "solver_progress", "LOG_EVERY_S", "PROGRESS_HELP"]

PIPE_WIDTH = 1000   # columns for a stream that is not a terminal; tables stay as narrow as their contents


def console(stderr: bool = False, file: IO[str] | None = None, min_width: int | None = None) -> Console:
    """A Console on stdout (or stderr, or `file`) with tierplan's width policy.

    A terminal (or a notebook) keeps its width, at least `min_width` when given; any other
    stream gets `TIERPLAN_WIDTH` or `PIPE_WIDTH` columns.
    """
    con = Console(stderr=stderr, file=file)
    if con.is_terminal or con.is_jupyter:
        if min_width and con.width < min_width:
            con = Console(stderr=stderr, file=file, width=min_width)
        return con
    width = os.environ.get("TIERPLAN_WIDTH", "")
    return Console(stderr=stderr, file=file, width=int(width) if width.isdigit() and int(width) > 0 else PIPE_WIDTH)


def column(table: Table, header: str, *, ident: bool = False, justify: JustifyMethod | None = None,
           **kw: Any) -> None:
    """Add a column: `ident` columns (names, ids, sites) never wrap; no header word is ever cut to "…"."""
    words = header.split() or [""]
    kw.setdefault("min_width", max(len(w) for w in words))
    table.add_column(header, justify=justify or ("left" if ident else "right"), no_wrap=ident, **kw)


def _ranges(con: Console, table: Table) -> list[Measurement]:
    """(least, natural) width of each column, padding included: the least keeps words (and no_wrap cells) whole."""
    opts = con.options.update_width(10 * PIPE_WIDTH)
    out = [table._measure_column(con, opts, c) for c in table.columns]
    return [Measurement(r.maximum, r.maximum) if c.no_wrap else r for c, r in zip(table.columns, out)]


def print_table(con: Console, table: Table) -> None:
    """Print `table` without cutting or cropping a cell, however narrow the terminal.

    At its natural width when that fits; else without borders; else with every column at least
    as wide as its longest word (headers wrap between words, the spare width goes left to right);
    else whole, wider than the terminal (which wraps the long lines), never cut to "…".
    """
    ranges = _ranges(con, table)
    if sum(r.maximum for r in ranges) + table._extra_width > con.width:
        table.box, table.show_edge, table.pad_edge = box.SIMPLE_HEAD, False, False
        ranges = _ranges(con, table)
    need = sum(r.maximum for r in ranges) + table._extra_width
    if need > con.width:
        spare = max(0, con.width - table._extra_width - sum(r.minimum for r in ranges))
        for i, (c, r) in enumerate(zip(table.columns, ranges)):
            give = min(spare, r.maximum - r.minimum)
            spare -= give
            c.width = r.minimum + give - table._get_padding_width(i)
        need = sum(r.minimum for r in ranges) + table._extra_width
        if need > con.width:
            # Console.color_system reads back one of the names its constructor takes
            colors = cast(Literal["auto", "standard", "256", "truecolor", "windows"] | None, con.color_system)
            con = Console(file=con.file, width=need, force_terminal=con.is_terminal, color_system=colors,
                          no_color=con.no_color)
    con.print(table)


# ----------------------------------------------------------------------------- progress on stderr
LOG_EVERY_S = 2.0   # a stream that is not a terminal gets a progress line at most this often
PROGRESS_HELP = ("Progress bars on stderr: --progress always (also with --json or into a file), --no-progress "
                 "never; default: only on a terminal and without --json.")


def progress_wanted(flag: bool | None, as_json: bool = False) -> bool:
    """Whether a command draws progress: `--progress` / `--no-progress` (`flag`) decide when given;
    otherwise only when stderr is a terminal and the result is not `--json`."""
    if flag is not None:
        return flag
    return not as_json and sys.stderr.isatty()


class ClockBar(BarColumn):
    """A bar that fills with the task's elapsed time against its total in seconds (a solver's time
    limit, a run's duration): it moves while the work reports nothing."""

    def render(self, task: Task) -> ProgressBar:
        total = task.total or 0.0
        done = min(task.elapsed or 0.0, total) if not task.finished else total
        return ProgressBar(total=max(0.0, total) or None, completed=done, width=self.bar_width,
                           pulse=not total, animation_time=task.get_time(), style=self.style,
                           complete_style=self.complete_style, finished_style=self.finished_style,
                           pulse_style=self.pulse_style)


@contextmanager
def progress(enabled: bool, *columns: str | ProgressColumn) -> Iterator[Progress]:
    """A rich Progress on stderr while the block runs; does nothing when not `enabled`.

    `columns` default to description, bar, done/total and elapsed time. On a terminal the bar
    redraws in place; on any other stream (a log, a pipe: only with `--progress`) the bars are
    printed as plain lines at most every LOG_EVERY_S, and once more at the end. Output to stdout
    is never redirected through it (stdout is the result).
    """
    cols = columns or (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    con = console(stderr=True)
    bar = Progress(*cols, console=con, disable=not enabled, transient=False, redirect_stdout=False)
    if not enabled or con.is_terminal:
        with bar:
            yield bar
        return
    stop = threading.Event()

    def log() -> None:
        last = None
        while not stop.wait(LOG_EVERY_S):
            with con.capture() as cap:
                con.print(bar.get_renderable())
            text = cap.get()
            if text != last and text.strip():
                con.file.write(text)
                con.file.flush()
                last = text

    thread = threading.Thread(target=log, name="progress-log", daemon=True)
    with bar:
        thread.start()
        try:
            yield bar
        finally:
            stop.set()
            thread.join()


class SolveFigures(Protocol):
    """What the solver bar reads of a planner.progress.SolveEvent (the planner sits above this module)."""

    @property
    def phase(self) -> str: ...
    @property
    def incumbent(self) -> float | None: ...
    @property
    def bound(self) -> float | None: ...
    @property
    def gap(self) -> float | None: ...


def _figures(ev: SolveFigures) -> str:
    """'best 1.2e+06, bound 1.1e+06, gap 8.3%' of a planner.progress.SolveEvent (what it has)."""
    parts = []
    if ev.incumbent is not None:
        parts.append(f"best {ev.incumbent:.4g}")
    if ev.bound is not None:
        parts.append(f"bound {ev.bound:.4g}")
    if ev.gap is not None:
        parts.append(f"gap {100 * ev.gap:.1f}%")
    return ", ".join(parts)


@contextmanager
def solver_progress(enabled: bool, time_limit_s: float, what: str = "plan",
                    ) -> Iterator[Callable[[SolveFigures], None] | None]:
    """A progress bar of the planner on stderr: its phase, the time used of the solver's limit, and the
    running CP-SAT model's incumbent, bound and gap. Yields the hook for `plan_app(progress=...)`
    (None when not `enabled`: CP-SAT then runs without callbacks)."""
    if not enabled:
        yield None
        return
    with progress(True, TextColumn(f"[bold]{what}[/] {{task.description}}"), ClockBar(), TimeElapsedColumn(),
                  TextColumn("{task.fields[figures]}")) as bar:
        task = bar.add_task("starting", total=time_limit_s, figures="")

        def hook(ev: SolveFigures) -> None:
            bar.update(task, description=ev.phase, figures=_figures(ev))
        yield hook
        bar.update(task, description="done", completed=time_limit_s)
