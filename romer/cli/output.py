"""What commands print: tables that never cut the names a user types, and JSON for scripts.

In a pipe or a CI log rich lays tables out at 80 columns (or ``$COLUMNS``). Identifier columns (model, method,
preset names) keep their full width and never wrap; every other column folds instead.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table


def console() -> Console:
    """The console of stdout (a fresh one per command: no global state)."""
    return Console(highlight=False)


def table(title: str, columns: Sequence[str], rows: Iterable[Sequence[str]], keys: Iterable[int] = (0,),
          right: Iterable[int] | None = None) -> Table:
    """A rich table whose ``keys`` columns are never cut or wrapped; the others fold to fit the width.

    ``right`` lists the right-justified columns (default: every column but the keys).
    """
    rows = [list(map(str, row)) for row in rows]
    keys = set(keys)
    right = set(range(len(columns))) - keys if right is None else set(right)
    out = Table(title=title)
    for i, name in enumerate(columns):
        justify = "right" if i in right else "left"
        if i in keys:
            width = max([len(name), *(len(row[i]) for row in rows)])
            out.add_column(name, justify=justify, no_wrap=True, min_width=width)
        else:
            out.add_column(name, justify=justify, overflow="fold")
    for row in rows:
        out.add_row(*row)
    return out


def write_json(path: Path | str | None, payload) -> bool:
    """Write ``payload`` as JSON to ``path`` atomically, or to stdout when ``path`` is ``-``.

    Returns True when the JSON went to stdout (the caller then prints nothing else there).
    """
    if path is None:
        return False
    if str(path) == "-":
        json.dump(payload, sys.stdout, indent=2, allow_nan=True)
        sys.stdout.write("\n")
        return True
    from romer.io import write_json_atomic

    write_json_atomic(Path(path), payload)
    return False


JSON_HELP = "Write the result as JSON to this file, or to stdout with '-' (then no table is printed)."
