"""How the ``sa-pgdispatch`` command (and its demo) print: rich in a terminal, plain
aligned text otherwise (pipes, logs, CI), and the cell formats they share."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from typing import TextIO

from rich.console import Console
from rich.table import Table

__all__ = ["Output", "cell", "duration", "json_text", "shorten"]


class Output:
    """rich in a terminal, plain aligned text otherwise."""

    def __init__(self, stream: TextIO | None = None, *, rich: bool | None = None) -> None:
        self.stream = stream if stream is not None else sys.stdout
        self.console = Console(file=self.stream, highlight=False, soft_wrap=False)
        self.rich = self.console.is_terminal if rich is None else rich

    def line(self, text: str = "", style: str | None = None) -> None:
        if self.rich:
            self.console.print(text, style=style, markup=False)
        else:
            print(text, file=self.stream, flush=True)

    def render_table(
        self, title: str | None, headers: Sequence[str], rows: Sequence[Sequence[object]]
    ) -> Table | str:
        cells = [[cell(v) for v in row] for row in rows]
        if self.rich:
            table = Table(
                title=title, title_justify="left", header_style="bold", show_header=any(headers)
            )
            for h in headers:
                table.add_column(h, overflow="fold")
            for row in cells:
                table.add_row(*row)
            return table
        widths = [len(h) for h in headers]
        for row in cells:
            widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
        out = [f"{title}:"] if title else []
        if any(headers):
            out.append(
                "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()
            )
        out += [
            "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
            for row in cells
        ]
        if not cells:
            out.append("(none)")
        return "\n".join(out)

    def table(
        self, title: str | None, headers: Sequence[str], rows: Sequence[Sequence[object]]
    ) -> None:
        rendered = self.render_table(title, headers, rows)
        if isinstance(rendered, str):
            print(rendered, file=self.stream, flush=True)
        else:
            self.console.print(rendered)


def cell(value: object) -> str:
    """A table cell: ``-`` for None, durations and times readable, floats to 2 places."""
    if value is None:
        return "-"
    if isinstance(value, timedelta):
        return duration(value)
    if isinstance(value, datetime):
        return value.astimezone().strftime("%H:%M:%S.%f")[:-3]
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def duration(value: timedelta | None) -> str:
    """``12.3 ms``, ``4.56 s`` or ``0:05:00``; ``-`` for None."""
    if value is None:
        return "-"
    seconds = value.total_seconds()
    if abs(seconds) < 1:
        return f"{seconds * 1000:.1f} ms"
    if abs(seconds) < 120:
        return f"{seconds:.2f} s"
    return str(timedelta(seconds=round(seconds)))


def json_text(value: object) -> str:
    """A job's result as JSON text, its exact numbers (Decimal) written as numbers."""
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, dict):
        items = (f"{json.dumps(str(k))}: {json_text(v)}" for k, v in value.items())
        return "{" + ", ".join(items) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(json_text(v) for v in value) + "]"
    return json.dumps(value, default=str)


def shorten(text: str, width: int = 60) -> str:
    """``text`` on one line, cut to ``width`` characters with an ellipsis."""
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"
