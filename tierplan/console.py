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
"""

from __future__ import annotations

import os
from typing import IO

from rich import box
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

__all__ = ["console", "column", "print_table", "PIPE_WIDTH"]

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


def column(table: Table, header: str, *, ident: bool = False, justify: str | None = None, **kw) -> None:
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
            con = Console(file=con.file, width=need, force_terminal=con.is_terminal, color_system=con.color_system,
                          no_color=con.no_color)
    con.print(table)
