"""What commands print: tables whose names and numbers stay whole, and JSON for scripts.

On a terminal a table is a rich table at the terminal's width: identifier columns (model, method, preset names)
keep their full width and never wrap, every other column folds instead. Off a terminal (a pipe, a file, a CI log)
a table is markdown rows, one line per row whatever ``$COLUMNS`` says, and no line of text is wrapped or cut: every
number stays whole on its line, and the output pastes into an issue or a README as it is.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from rich.console import Console, ConsoleOptions, RenderResult
from rich.table import Table
from rich.text import Text


def console() -> Console:
    """The console of stdout (a fresh one per command: no global state); off a terminal it never wraps or crops."""
    out = Console(highlight=False)
    out.soft_wrap = not out.is_terminal
    return out


class Tabular:
    """A table that renders as a rich table on a terminal and as markdown rows anywhere else."""

    def __init__(self, title: str, columns: Sequence[str], rows: Iterable[Sequence[str]], keys: Iterable[int] = (0,),
                 right: Iterable[int] | None = None):
        self.title, self.columns = title, [str(c) for c in columns]
        self.rows = [[str(cell) for cell in row] for row in rows]
        self.keys = set(keys)
        self.right = set(range(len(self.columns))) - self.keys if right is None else set(right)

    def rich(self) -> Table:
        out = Table(title=self.title)
        for i, name in enumerate(self.columns):
            justify = "right" if i in self.right else "left"
            if i in self.keys:
                width = max([len(name), *(len(row[i]) for row in self.rows)])
                out.add_column(name, justify=justify, no_wrap=True, min_width=width)
            else:
                out.add_column(name, justify=justify, overflow="fold")
        for row in self.rows:
            out.add_row(*row)
        return out

    def markdown(self) -> list[str]:
        def line(cells):
            return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

        rule = "|" + "|".join("---:" if i in self.right else "---" for i in range(len(self.columns))) + "|"
        return [*([self.title] if self.title else []), line(self.columns), rule, *map(line, self.rows), ""]

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        if console.is_terminal:
            yield self.rich()
            return
        for text in self.markdown():
            yield Text(text, no_wrap=True, overflow="ignore", end="\n")


def table(title: str, columns: Sequence[str], rows: Iterable[Sequence[str]], keys: Iterable[int] = (0,),
          right: Iterable[int] | None = None) -> Tabular:
    """A table (:class:`Tabular`) whose ``keys`` columns are never cut or wrapped on a terminal; ``right`` lists the
    right-justified columns (default: every column but the keys)."""
    return Tabular(title, columns, rows, keys, right)


def write_json(path: Path | str | None, payload) -> bool:
    """Write ``payload`` as JSON to ``path`` atomically, or to stdout when ``path`` is ``-``.

    Returns True when the JSON went to stdout (the caller then prints nothing else there).
    """
    if path is None:
        return False
    if str(path) == "-":
        from romer.report.tables import clean_floats

        json.dump(clean_floats(payload), sys.stdout, indent=2, allow_nan=False)  # strict JSON: NaN / ±∞ → null
        sys.stdout.write("\n")
        return True
    from romer.io import write_json_atomic

    write_json_atomic(Path(path), payload)
    return False


JSON_HELP = "Write the result as JSON to this file, or to stdout with '-' (then no table is printed)."
