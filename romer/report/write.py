"""A report from a results store alone: tables (markdown, CSV, JSON), plots (PNG) and one HTML page.

Everything is derived from the stored rows in a fixed order, so regenerating from the same store gives the same
bytes. A report is written as a whole: every file goes into a hidden staging folder beside the output folder
first (``romer.staging``); only once all are written does it replace the old report — the staging folder is
renamed to the output folder when there is none yet, else (the output folder usually also holds the results
store, which must stay where it is) each report file is renamed over its old version and plots of the old report
that the new one lacks are removed. A failure while writing (a full disk, a plot that fails) leaves the old
report byte-identical and no staging folder.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from romer.errors import UserError
from romer.eval.spec import settings_label
from romer.store import ResultsStore
from romer.io import write_bytes_atomic, write_text_atomic
from romer.report import html, tables
from romer.report.aggregate import aggregate_rows, config_orders
from romer.report.plots import Plot, make_plots
from romer.report.setup import setup_line
from romer.staging import make_staging, publish_modes

STORE_NAME = "results.sqlite"
PLOTS = "plots"


@dataclass
class Report:
    """Aggregated rows of one config with its provenance and plots; ``paths`` once written."""

    title: str
    rows: list[dict]
    config: dict | None
    config_hash: str | None
    git: str
    versions: dict
    setup: str = ""
    plots: list[Plot] = field(default_factory=list)
    paths: dict[str, Path] = field(default_factory=dict)


def resolve_store(store_or_dir: str | Path) -> Path:
    """A store file, or a run folder holding ``results.sqlite`` (UserError if neither)."""
    path = Path(store_or_dir).expanduser()
    if path.is_dir():
        path = path / STORE_NAME
    if not path.is_file():
        raise UserError(f"no results store at {path}")
    return path


def _match_hash(store: ResultsStore, prefix: str) -> str:
    """The stored config hash starting with ``prefix`` (UserError if none or several)."""
    matches = [c["config_hash"] for c in store.configs() if c["config_hash"].startswith(prefix)]
    if len(matches) != 1:
        raise UserError(f"{'no' if not matches else 'more than one'} config in {store.path} starts with {prefix!r}")
    return matches[0]


def _joined(values) -> str:
    return ", ".join(sorted(set(values))) or "unknown"


def build_report(store_path: str | Path, config_hash: str | None = None, plots: bool = True) -> Report:
    """Read the store and aggregate one config (default: the config of the latest stored trial)."""
    with ResultsStore(resolve_store(store_path), read_only=True) as store:
        config_hash = _match_hash(store, config_hash) if config_hash else store.latest_config_hash()
        trials = store.rows(config_hash) if config_hash else []
        record = store.config(config_hash) if config_hash else None
    if not trials:
        raise UserError(f"no trials in {store_path}" + (f" for config {config_hash}" if config_hash else ""))
    config = record["config"] if record else None
    rows = aggregate_rows(trials, config)
    libraries = sorted({k for t in trials for k in t["versions"]})
    versions = {k: _joined(t["versions"].get(k, "unknown") for t in trials) for k in libraries}
    name = record["name"] if record else "experiment"
    text = "" if not config else f" — {settings_label(config.get('eval') or {})}"
    report = Report(f"romer report: {name}{text}", rows, config, config_hash, _joined(t["git"] for t in trials), versions,
                    setup_line(config, versions, rows))
    if plots:
        report.plots = make_plots(rows, trials, config_orders(config))
    return report


def write_report(store_path: str | Path, out_dir: str | Path, config_hash: str | None = None) -> Report:
    """Write results.md / .csv / .json, plots/*.png and report.html into ``out_dir`` as a whole (see the module);
    returns the report."""
    report = build_report(store_path, config_hash)
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise UserError(f"report folder {out} is a file; give a folder path")
    staging = make_staging(out)
    try:
        names = _write_files(report, staging)
        publish_modes(staging)
        _publish(staging, out, names)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    report.paths = {key: out / name for key, name in names.items()}
    return report


def _write_files(report: Report, folder: Path) -> dict[str, str]:
    """Every file of ``report`` into ``folder``: key → path relative to it."""
    texts = {"markdown": ("results.md", tables.markdown(report.rows, report.title, report.setup)),
             "csv": ("results.csv", tables.to_csv(report.rows)),
             "json": ("results.json", tables.to_json(report.rows, report.config, report.config_hash, report.git,
                                                     report.versions)),
             "html": ("report.html", html.page(report.title, report.rows, report.plots, report.config,
                                               report.config_hash, report.git, report.versions, report.setup))}
    names = {}
    for key, (name, text) in texts.items():
        write_text_atomic(folder / name, text)
        names[key] = name
    for plot in report.plots:
        write_bytes_atomic(folder / PLOTS / plot.name, plot.png)
        names[plot.name] = f"{PLOTS}/{plot.name}"
    return names


def _publish(staging: Path, out: Path, names: dict[str, str]) -> None:
    """Put the complete report in ``staging`` in place of the one in ``out`` (renames only)."""
    if not out.exists():
        try:
            staging.rename(out)  # the folder as a whole
            return
        except OSError:
            if not out.is_dir():  # not a concurrent report that made it first
                raise
    fresh = {name for name in names.values() if name.startswith(f"{PLOTS}/")}
    if fresh:
        (out / PLOTS).mkdir(mode=0o755, exist_ok=True)
    for name in names.values():
        (staging / name).replace(out / name)
    for old in (out / PLOTS).glob("*.png"):
        if f"{PLOTS}/{old.name}" not in fresh:
            old.unlink(missing_ok=True)
