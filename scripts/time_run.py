"""Time `romer run` on a fresh store and write the time claim (docs/experiments.md, "Time") from the measurement.

    python scripts/time_run.py [--out /tmp/fresh] [--update-readme] [-- ROMER-RUN-ARGS …]

Runs ``/usr/bin/time -v .venv/bin/romer run --out OUT …`` after deleting OUT, then reads the results store: the
run's own wall time and its stage seconds (load, clean, program, calibrate, evaluate, summed over the trials,
i.e. over the workers) from the ``runs`` table; "start-up + report" is the rest of the command's wall time
(interpreter and imports, config, the report's tables, plots and HTML). The 1-minute load average is read
before and after. ``--update-readme`` (the name kept from when the section lived in README.md) rewrites
docs/experiments.md between ``<!-- run-time:begin -->`` and ``<!-- run-time:end -->``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from romer.experiment.stages import STAGES
from romer.store import ResultsStore
from romer.io import replace_between_markers
from update_readme import page

ROOT = Path(__file__).resolve().parents[1]
PAGE = page("run-time", ROOT)  # docs/experiments.md (scripts/update_readme.py, WRITTEN_ELSEWHERE)
BEGIN, END = "<!-- run-time:begin -->", "<!-- run-time:end -->"
GOAL_S = 240


def _field(report: str, label: str) -> str:
    match = re.search(rf"^\s*{re.escape(label)}: (.+)$", report, re.MULTILINE)
    if match is None:
        raise SystemExit(f"/usr/bin/time -v printed no {label!r}")
    return match.group(1).strip()


def _seconds(clock: str) -> float:
    """h:mm:ss or m:ss.ss → seconds."""
    parts = [float(p) for p in clock.split(":")]
    return sum(p * 60 ** i for i, p in enumerate(reversed(parts)))


def measure(out: Path, extra: list[str]) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    load_before = os.getloadavg()[0]
    command = ["/usr/bin/time", "-v", str(ROOT / ".venv/bin/romer"), "run", "--out", str(out), *extra]
    done = subprocess.run(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    load_after = os.getloadavg()[0]
    if done.returncode != 0:
        raise SystemExit(f"romer run failed ({done.returncode}):\n{done.stderr[-2000:]}")
    with ResultsStore(out / "results.sqlite") as store:
        (run,) = store.runs()[-1:]
        trials = store.count(run["config_hash"])
    wall = _seconds(_field(done.stderr, "Elapsed (wall clock) time (h:mm:ss or m:ss)"))
    return {"wall": wall, "cpu": _field(done.stderr, "Percent of CPU this job got"),
            "rss_gb": int(_field(done.stderr, "Maximum resident set size (kbytes)")) / 1e6, "run": run,
            "trials": trials, "load": (load_before, load_after), "command": " ".join(["romer", "run", *extra]),
            "extra": extra}


def paragraph(m: dict) -> str:
    run, wall = m["run"], m["wall"]
    total = sum(run["stages"].values())
    stages = ", ".join(f"{stage} {run['stages'].get(stage, 0.0):.0f} s" for stage in STAGES)
    verdict = (f"within the ≤ {GOAL_S} s goal" if wall <= GOAL_S else
               f"**{wall - GOAL_S:.0f} s over** the ≤ {GOAL_S} s goal")
    minutes = f"{int(wall // 60)} min {wall % 60:.0f} s"
    return (f"**Time.** `{m['command']}` ({m['trials']} trials) took **{minutes}** wall on a fresh store "
            f"(`/usr/bin/time -v`, {m['cpu']} CPU, peak RSS {m['rss_gb']:.1f} GB; 1-minute load average "
            f"{m['load'][0]:.1f} before, {m['load'][1]:.1f} after, on this project's 2-core machine), {verdict}. "
            f"Where it goes ({run['backend']} backend, {run['workers']} worker{'s' if run['workers'] > 1 else ''}; "
            f"stage seconds summed over the workers, from the store's `runs` table, {total:.0f} s in all): "
            f"{stages}; the run itself {run['seconds']:.0f} s wall, start-up + report "
            f"{wall - run['seconds']:.0f} s. Regenerate: `python scripts/time_run.py --update-readme"
            f"{' -- ' + ' '.join(m['extra']) if m['extra'] else ''}`.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/fresh"))
    parser.add_argument("--update-readme", action="store_true",
                        help="rewrite the run-time section of docs/experiments.md with the measurement")
    parser.add_argument("extra", nargs="*", help="arguments for romer run (after --)")
    args = parser.parse_args()
    text = paragraph(measure(args.out, args.extra))
    print(text)
    if args.update_readme:
        replace_between_markers(PAGE, BEGIN, END, text)


if __name__ == "__main__":
    sys.exit(main())
