"""One self-contained HTML page: provenance, the results table and every plot embedded as a base64 PNG."""

from __future__ import annotations

import base64
import json
import struct
from html import escape

from romer.report.tables import HEADER, cells

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1400px; color: #222; }
table { border-collapse: collapse; font-size: 13px; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 3px 8px; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
th { background: #f2f2f2; }
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
    head = "".join(f"<th>{escape(h)}</th>" for h in HEADER)
    body = []
    for row in rows:
        body.append("<tr>" + "".join(f'<td class="num">{escape(c)}</td>' if i >= 5 else f"<td>{escape(c)}</td>"
                                     for i, c in enumerate(cells(row))) + "</tr>")
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n" + "\n".join(body) + "\n</tbody>\n</table>"


def page(title: str, rows: list[dict], plots: list, config: dict | None, config_hash: str | None, git: str,
         versions: dict) -> str:
    """The whole page as a string (deterministic for the same inputs)."""
    parts = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
             f"<title>{escape(title)}</title>", f"<style>{STYLE}</style>", "</head>", "<body>",
             f"<h1>{escape(title)}</h1>",
             f"<p>config <code>{escape(str(config_hash))}</code> · git <code>{escape(git)}</code> · "
             + " · ".join(f"{escape(k)} {escape(str(v))}" for k, v in sorted(versions.items())) + "</p>",
             "<h2>Results</h2>",
             "<p>PPL: token perplexity, mean ± sample std over chips, with the 95 % Student-t interval; reduction: "
             "100·(1 − PPL/PPL<sub>noisy</sub>); gap recovered: 100·(PPL<sub>noisy</sub> − PPL)/(PPL<sub>noisy</sub>"
             " − PPL<sub>clean</sub>), chips paired by seed; CV: load-balance coefficient of variation of expert "
             "frequencies on the noisy chip → with the method; t in seconds after programming.</p>",
             table_html(rows), "<h2>Plots</h2>"]
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
