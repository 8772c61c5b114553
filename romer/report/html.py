"""One self-contained HTML page: provenance, one method × model table per (preset, placement, t) setting, the full
table of every row (collapsed), and every plot embedded as a base64 PNG."""

from __future__ import annotations

import base64
import json
import struct
from html import escape

from romer.report.tables import Grid, accuracy_keys, cells, grid_cell, grids, header

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1280px; padding: 0 2em; line-height: 1.4;
       color: #222; }
table { border-collapse: collapse; font-size: 13px; margin: 1em 0; line-height: 1.25; }
td { white-space: nowrap; }
.scroll { overflow-x: auto; }
th, td { border: 1px solid #ccc; padding: 3px 8px; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
th { background: #f2f2f2; }
table.grid { font-size: 14px; }
table.grid td { padding: 4px 12px; min-width: 9em; }
table.grid th[scope="row"], table.grid thead th:first-child { text-align: left; font-weight: 600; }
table.grid caption { caption-side: bottom; text-align: left; font-size: 12px; color: #555; padding-top: 4px; }
table.grid tbody tr:nth-child(even) { background: #fafafa; }
.ppl { font-weight: 600; }
.detail { font-size: 12px; color: #666; }
.detail.up { color: #1a7f37; }
.detail.down { color: #b42318; }
h3 { margin: 1.6em 0 0.2em; font-size: 16px; }
details { margin: 2em 0; }
summary { cursor: pointer; font-weight: 600; }
figure { margin: 2em 0; }
figcaption { font-size: 13px; color: #555; }
img { max-width: 100%; height: auto; }
pre { background: #f7f7f7; padding: 1em; font-size: 12px; overflow-x: auto; }
"""


def png_size(png: bytes) -> tuple[int, int]:
    """(width, height) in pixels from a PNG's IHDR chunk."""
    if png[:8] != b"\x89PNG\r\n\x1a\n" or png[12:16] != b"IHDR":
        raise ValueError("not a PNG")
    return struct.unpack(">II", png[16:24])


def table_html(rows: list[dict]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header(rows))
    accuracy = accuracy_keys(rows)
    body = []
    for row in rows:
        body.append("<tr>" + "".join(f'<td class="num">{escape(c)}</td>' if i >= 5 else f"<td>{escape(c)}</td>"
                                     for i, c in enumerate(cells(row, accuracy))) + "</tr>")
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n" + "\n".join(body) + "\n</tbody>\n</table>"


UNITS = ((86400.0, "d"), (3600.0, "h"), (60.0, "min"))


def duration(seconds: float) -> str:
    """``t`` in s, with the largest whole unit beside it when there is one: 86400 → "86400 s (1 d)"."""
    for size, unit in UNITS:
        if seconds >= size and seconds % size == 0:
            return f"{seconds:g} s ({seconds / size:g} {unit})"
    return f"{seconds:g} s"


def _grid_td(row: dict | None) -> str:
    if row is None:
        return '<td class="num">—</td>'
    ppl, detail = grid_cell(row)
    sign = row.get("reduction_pct") if row["kind"] != "noisy" else None
    tone = "" if sign is None or abs(sign) < 0.05 else " up" if sign > 0 else " down"
    return (f'<td class="num"><span class="ppl">{escape(ppl)}</span><br>'
            f'<span class="detail{tone}">{escape(detail)}</span></td>')


def grid_html(grid: Grid) -> str:
    """A method × model table of one setting, headed by the setting and the chips behind it."""
    setting = grid.setting
    chips = sorted({row["chips"] for row in grid.cells.values()})
    head = "<th>method</th>" + "".join(f"<th>{escape(m)}</th>" for m in grid.models)
    body = ["<tr>" + f'<th scope="row">{escape(method)}</th>'
            + "".join(_grid_td(grid.cells.get((method, model))) for model in grid.models) + "</tr>"
            for method in grid.methods]
    return (f"<h3>preset {escape(str(setting['preset']))} · placement {escape(str(setting['placement']))} · "
            f"t = {escape(duration(setting['t']))}</h3>\n"
            f'<table class="grid">\n<caption>{"/".join(map(str, chips))} chips per cell</caption>\n'
            f"<thead><tr>{head}</tr></thead>\n<tbody>\n" + "\n".join(body) + "\n</tbody>\n</table>")


def page(title: str, rows: list[dict], plots: list, config: dict | None, config_hash: str | None, git: str,
         versions: dict, setup: str = "") -> str:
    """The whole page as a string (deterministic for the same inputs); ``setup``: the table's setup line."""
    parts = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
             f"<title>{escape(title)}</title>", f"<style>{STYLE}</style>", "</head>", "<body>",
             f"<h1>{escape(title)}</h1>",
             f"<p>config <code>{escape(str(config_hash))}</code> · git <code>{escape(git)}</code> · "
             + " · ".join(f"{escape(k)} {escape(str(v))}" for k, v in sorted(versions.items())) + "</p>",
             *([f"<p>{escape(setup)}</p>"] if setup else []),
             "<h2>Results</h2>",
             "<p>PPL: token perplexity, mean ± sample std over chips, with the 95 % Student-t interval; reduction: "
             "100·(1 − PPL/PPL<sub>noisy</sub>); gap recovered: 100·(PPL<sub>noisy</sub> − PPL)/(PPL<sub>noisy</sub>"
             " − PPL<sub>clean</sub>), chips paired by seed; CV: load-balance coefficient of variation of expert "
             "frequencies on the noisy chip → with the method; t in seconds after programming; dig.: share of the "
             "analog weights kept digital. One table per setting: each cell is PPL mean ± std, then reduction · "
             "gap recovered (green: better than noisy, red: worse).</p>",
             *[grid_html(grid) for grid in grids(rows)],
             f"<details><summary>All {len(rows)} rows</summary>", f'<div class="scroll">{table_html(rows)}</div>',
             "</details>",
             "<h2>Plots</h2>"]
    for plot in plots:
        width, height = png_size(plot.png)
        data = base64.b64encode(plot.png).decode("ascii")
        parts.append(f'<figure id="{escape(plot.name)}"><img src="data:image/png;base64,{data}" width="{width}" '
                     f'height="{height}" alt="{escape(plot.caption)}"><figcaption>{escape(plot.caption)}'
                     f"</figcaption></figure>")
    if config is not None:
        parts += ["<h2>Config</h2>",
                  f"<pre>{escape(json.dumps(config, indent=2, sort_keys=True, ensure_ascii=False))}</pre>"]
    parts += ["</body>", "</html>"]
    return "\n".join(parts) + "\n"
