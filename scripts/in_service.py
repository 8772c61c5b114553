"""A calibrated chip in service (docs/in-service.md): the measurements, per chip, and their paired summary.

    python scripts/in_service.py measure [--chips 5] [--model olmoe-tiny]   # monitor + transfer, one JSON per chip
    python scripts/in_service.py summary [--update-doc]                     # + the romer run stores → summary.json

``measure`` programs each chip of the default chip (PCM ×10, t = 1 day, MoE analog) once and, with the P1
corrections installed one set at a time (``routing_rule.install``), scores:

* **online vs offline** (monitor): P1 fitted by the streaming monitor (``romer.calibrate.monitor``, 1024 bins)
  after 1, 2, 4 served validation windows, against offline P1 on 16 train windows, all scored on the first
  1,024 test tokens; the same from the served stream's first 1, 2, 4 windows (contiguous text, what a
  monitor has seen after serving them); and the served validation stream (8,192 tokens) itself with the
  monitor refitting every 1,024 tokens (two windows) from no correction, against the noisy chip and the offline
  plan on the same windows;
* **calibration windows and percentiles**: offline P1 on 1, 4, 16, 64 train windows with (1, 99) and with the
  data-only tail-count rule (lo = max(1, 100·32/T) for T calibration tokens: each tail holds ≥ 32 of them),
  scored on the test tokens;
* **transfer**: P1 calibrated on 4 train windows of one source (austen, kjv, or the user dataset: this
  repository's docs, ``user_text``) scored on 1,024 validation tokens of each, against the noisy chip and P1 on
  the mixed train text.

Every fit reads its noisy and clean percentiles from the same sketches (a monitor observing, not routing), so
P1 on n windows here equals ``Calibrator`` on those n windows (``tests/test_monitor.py``). Results go to
``results/in-service-monitor/chip<seed>.json`` (a chip already there is skipped). ``summary`` reads them and the
``romer run in-service`` / ``in-service-router-digital`` stores, writes ``results/in-service-monitor/summary.json``
and ``docs/in-service-time.png``, and prints the tables of docs/in-service.md (``--update-doc`` rewrites its
generated section).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "results" / "in-service-monitor"
EVAL_TOKENS, STREAM_TOKENS, WINDOW = 1024, 8192, 512
ONLINE_STEPS, WINDOW_COUNTS, SOURCE_WINDOWS, OFFLINE_WINDOWS = (1, 2, 4), (1, 4, 16, 64), 4, 16
SOURCES = ("austen", "kjv", "user")  # the bundled corpus's two sources and a user dataset (user_text)
TAIL_TOKENS = 32


def tail_rule(tokens: int) -> tuple[float, float]:
    """The data-only percentile rule: each tail holds at least TAIL_TOKENS of the T calibration tokens."""
    lo = min(max(1.0, 100.0 * TAIL_TOKENS / tokens), 25.0)
    return (lo, 100.0 - lo)


def user_text(folder: Path) -> Path:
    """The user dataset: this repository's own documentation (docs/*.md, our writing: technical English with
    tables and code, unlike the bundled novels and scripture), frozen into ``folder``/user-text.txt on first use so
    that later runs read the same text; its first half calibrates, its second half is scored."""
    path = folder / "user-text.txt"
    if not path.exists():
        from romer.io import write_text_atomic

        write_text_atomic(path, "\n\n".join(p.read_text() for p in sorted((ROOT / "docs").glob("*.md"))))
    return path


def source_file(folder: Path, split: str, source: str | None) -> Path:
    from romer.data.corpus import load_text

    path = folder / f"{split}-{source or 'all'}.txt"
    if not path.exists():
        if source == "user":
            text = user_text(OUT).read_text()
            middle = text.index("\n\n", len(text) // 2)
            path.write_text(text[:middle] if split == "train" else text[middle:])
        else:
            path.write_text(load_text(split, source))
    return path


def windows_of(tokenizer, path: Path, count: int):
    from romer.calibrate.config import CalibrationData
    from romer.calibrate.data import calibration_windows

    return calibration_windows(tokenizer, CalibrationData(sequences=count, window=WINDOW, dataset="text",
                                                          data_path=str(path), split="test"))


def first_windows(tokenizer, text: str, count: int) -> torch.Tensor:
    """The first ``count`` BOS-prefixed windows of ``text`` (contiguous: what a monitor has seen after serving
    them), against ``windows_of``'s windows drawn across a whole split."""
    from romer.eval import token_windows

    ids = tokenizer.backend_tokenizer.encode(text, add_special_tokens=False).ids
    return torch.stack(token_windows(ids, WINDOW, tokenizer.bos_token_id)[:count])


class Sketched:
    """A monitor observing windows one at a time (no routing change), read at checkpoints: (tokens, per-layer
    long sketches' fits) — the noisy side; the clean side is the same monitor on the clean model."""

    def __init__(self, model, windows, checkpoints, levels_for):
        from romer.calibrate.data import run_windows
        from romer.calibrate.monitor import MonitorConfig, Percentiles, RoutingMonitor
        from romer.models.view import moe_layers

        unused = {l.index: Percentiles((1.0, 50.0, 99.0), torch.zeros(l.num_experts, 3)) for l in moe_layers(model)}
        self.at = {}
        with RoutingMonitor(model, unused, MonitorConfig(bins=1024)) as monitor:
            for i in range(max(checkpoints)):
                run_windows(model, windows[i:i + 1], 1)
                if i + 1 in checkpoints:
                    self.at[i + 1] = {levels: self.read(monitor, levels)
                                      for levels in levels_for(monitor.sketched_tokens())}

    @staticmethod
    def read(monitor, levels) -> dict:
        from romer.calibrate.monitor import Percentiles

        three = (levels[0], 50.0, levels[1])
        return {l.index: Percentiles(three, monitor.state[l.index].long.quantiles(three)) for l in monitor.layers}


def fixes(noisy: dict, clean: dict, levels) -> list:
    from romer.calibrate import recalibration as recal
    from romer.calibrate.config import RecalibrateConfig
    from romer.calibrate.routing_rule import RouterFix

    config = RecalibrateConfig(percentiles=levels)
    return [recal.fit_quantile(noisy[i], clean[i], config, RouterFix(i)) for i in sorted(noisy)]


def measure_chip(model, tokenizer, seed: int, texts: dict, clean: dict) -> dict:
    import romer
    from romer.calibrate import apply
    from romer.calibrate.monitor import MonitorConfig, RoutingMonitor
    from romer.calibrate.plan import Plan
    from romer.calibrate.routing_rule import install
    from romer.calibrate.serving import serve_text
    from romer.models.view import moe_layers

    chip = romer.default_chip(seed=seed)
    out = {"seed": seed, "chip": chip.to_dict()}
    layers = moe_layers(model)

    def score(text: str, fix_list) -> float:
        handles = install(layers, fix_list or [])
        try:
            return romer.EvalSpec(window=WINDOW).perplexity(model, tokenizer, text).ppl
        finally:
            for h in handles:
                h.remove()

    with apply(model, chip, Plan.none(chip)):
        fixed = (1.0, 99.0)
        train = Sketched(model, texts["train-windows"], set(WINDOW_COUNTS), lambda t: {fixed, tail_rule(t)})
        online = Sketched(model, texts["stream-windows"], set(ONLINE_STEPS), lambda t: {fixed})
        served_first = Sketched(model, texts["stream-first-windows"], set(ONLINE_STEPS), lambda t: {fixed})
        sources = {s: Sketched(model, texts[f"train-{s}-windows"], {SOURCE_WINDOWS}, lambda t: {fixed})
                   for s in SOURCES}
        offline = fixes(train.at[OFFLINE_WINDOWS][fixed], clean["train-reference"], fixed)
        test = texts["test"]
        out["test"] = {"noisy": score(test, None), "offline": score(test, offline)}
        reference = clean["train-reference"]  # the clean percentiles of the 16 offline windows
        out["online"] = {str(n): score(test, fixes(online.at[n][fixed], reference, fixed)) for n in ONLINE_STEPS}
        out["online_contiguous"] = {str(n): score(test, fixes(served_first.at[n][fixed], reference, fixed))
                                    for n in ONLINE_STEPS}
        out["windows"] = {}
        for n in WINDOW_COUNTS:
            for name, levels in (("fixed", fixed), ("rule", tail_rule(n * WINDOW))):
                out["windows"][f"{n}/{name}"] = {"levels": list(levels), "ppl": score(
                    test, fixes(train.at[n][levels], clean["train"][n][levels], levels))}
        out["transfer"] = {}
        for target in SOURCES:
            text = texts[f"validation-{target}"]
            row = {"noisy": score(text, None), "mixed": score(text, offline)}
            for s, sk in sources.items():
                row[s] = score(text, fixes(sk.at[SOURCE_WINDOWS][fixed], clean[s][SOURCE_WINDOWS][fixed], fixed))
            out["transfer"][target] = row
        stream = texts["stream"]
        served = {}
        for name, start, every in (("noisy", [], 0), ("offline", offline, 0), ("monitor", [], 2 * WINDOW)):
            with RoutingMonitor(model, reference, MonitorConfig(refit_every=every, bins=1024), start) as monitor:
                result = serve_text(model, tokenizer, stream, monitor, window=WINDOW, step=1)
            served[name] = {"ppl": result.ppl, "steps": [math.exp(e.extra["nll"] / e.extra["scored"])
                                                         for e in result.log],
                            "refits": [e.window for e in result.log if e.refit]}
        out["served"] = served
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("measure")
    m.add_argument("--chips", type=int, default=5)
    m.add_argument("--model", default="olmoe-tiny")
    m.add_argument("--smoke", type=Path, help="a few tokens of everything, into this folder (checks the script)")
    s = sub.add_parser("summary")
    s.add_argument("--update-doc", action="store_true")
    args = parser.parse_args(argv)
    return run_measure(args) if args.command == "measure" else run_summary(args)


def run_measure(args) -> int:
    import romer
    from romer.eval.spec import token_prefix
    from romer.io import write_text_atomic

    global OUT, EVAL_TOKENS, STREAM_TOKENS, WINDOW, ONLINE_STEPS, WINDOW_COUNTS, SOURCE_WINDOWS, OFFLINE_WINDOWS
    if args.smoke is not None:
        OUT, EVAL_TOKENS, STREAM_TOKENS, WINDOW = args.smoke, 128, 256, 64
        ONLINE_STEPS, WINDOW_COUNTS, SOURCE_WINDOWS, OFFLINE_WINDOWS = (1, 2), (1, 2), 1, 2
    OUT.mkdir(parents=True, exist_ok=True)
    model, tokenizer = romer.load(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        texts = {"train-windows": windows_of(tokenizer, source_file(folder, "train", None), max(WINDOW_COUNTS)),
                 "stream-windows": windows_of(tokenizer, source_file(folder, "validation", None), max(ONLINE_STEPS)),
                 "test": token_prefix(tokenizer, romer.EvalSpec(split="test").full_text(), EVAL_TOKENS),
                 "stream": token_prefix(tokenizer, romer.EvalSpec(split="validation").full_text(), STREAM_TOKENS)}
        texts["stream-first-windows"] = first_windows(tokenizer, texts["stream"], max(ONLINE_STEPS))
        for s in SOURCES:
            texts[f"train-{s}-windows"] = windows_of(tokenizer, source_file(folder, "train", s), SOURCE_WINDOWS)
            texts[f"validation-{s}"] = token_prefix(tokenizer, source_file(folder, "validation", s).read_text(),
                                                    EVAL_TOKENS)
    fixed = (1.0, 99.0)
    clean = {"train": Sketched(model, texts["train-windows"], set(WINDOW_COUNTS),
                               lambda t: {fixed, tail_rule(t)}).at}
    for s in SOURCES:
        clean[s] = Sketched(model, texts[f"train-{s}-windows"], {SOURCE_WINDOWS}, lambda t: {fixed}).at
    clean["train-reference"] = clean["train"][OFFLINE_WINDOWS][fixed]
    clean_ppl = {"test": romer.EvalSpec(window=WINDOW).perplexity(model, tokenizer, texts["test"]).ppl}
    write_text_atomic(OUT / "clean.json", json.dumps(clean_ppl, indent=1) + "\n")
    for seed in range(args.chips):
        path = OUT / f"chip{seed}.json"
        if path.exists():
            continue
        result = measure_chip(model, tokenizer, seed, texts, clean)
        write_text_atomic(path, json.dumps(result, indent=1) + "\n")
        print(f"chip {seed}: {path}", flush=True)
    return 0


TIMES = {3600.0: "1 h", 86400.0: "1 day", 2592000.0: "30 days", 31536000.0: "1 year", 315360000.0: "10 years"}


def per_chip(rows) -> dict:
    """(model, preset, t, method) → {chip seed: PPL} from a romer run store's rows."""
    out: dict = {}
    for r in rows:
        if r["ppl"] is not None:
            key = (r["model"], r["preset"], float(r["t_inference"]), r["method"])
            out.setdefault(key, {})[r["chip_seed"]] = r["ppl"]
    return out


def store_rows(name: str) -> list[dict]:
    from romer.store import ResultsStore

    path = ROOT / "results" / name / "results.sqlite"
    if not path.is_file():
        return []
    return ResultsStore(path, read_only=True).rows()  # every config in it: one per chip seed (the regenerate loop)


def paired(ppl: dict, base: dict) -> dict:
    """Per-chip relative change of ``ppl`` against ``base`` (%, positive: higher PPL), mean and 95 % t-interval."""
    from romer.estimators import interval, shared_seeds

    seeds = shared_seeds(ppl, base)
    return {"chips": len(seeds), **interval([100 * (ppl[s] / base[s] - 1) for s in seeds])}


REPAIRS = {"recalibration": "P1", "romer": "ROMER"}  # refitted at t; "<name> fitted at 1 h": fitted once


def fit_serve_summary() -> dict:
    """Fit once at 1 h vs refit at every t, per model, repair, preset and t (romer run in-service; router digital
    from in-service-router-digital)."""
    cells = per_chip(store_rows("in-service"))
    digital = per_chip(store_rows("in-service-router-digital"))
    out = []
    for (model, preset, t, method), ppl in sorted(cells.items()):
        if method not in REPAIRS:
            continue
        at = lambda name: cells.get((model, preset, t, name), {})  # noqa: E731
        noisy, once = at("noisy"), at(f"{method} fitted at 1 h")
        row = {"model": model, "repair": REPAIRS[method], "preset": preset, "t": t, "refit": statistics_of(ppl),
               "noisy": statistics_of(noisy), "once": statistics_of(once), "clean": statistics_of(at("clean")),
               "refit_vs_noisy": paired(ppl, noisy), "once_vs_noisy": paired(once, noisy),
               "once_vs_refit": paired(once, ppl)}
        router = {seed: v for seed, v in digital.get((model, preset, t, "noisy"), {}).items() if seed in noisy}
        if router:  # paired: the chips both runs have
            row["router_digital"] = statistics_of(router)
            row["router_digital_vs_noisy"] = paired(router, noisy)
        out.append(row)
    return {"cells": out}


def statistics_of(ppl: dict) -> dict:
    from romer.estimators import mean_std

    mean, std = mean_std(list(ppl.values())) if ppl else (None, None)
    return {"mean": mean, "std": std, "chips": len(ppl), "by_chip": {str(k): v for k, v in sorted(ppl.items())}}


def monitor_summary() -> dict:
    """The per-chip measure files, paired by chip."""
    chips = [json.loads(p.read_text()) for p in sorted(OUT.glob("chip*.json"))]
    if not chips:
        return {}
    by = lambda f: {c["seed"]: f(c) for c in chips}  # noqa: E731
    noisy = by(lambda c: c["test"]["noisy"])
    offline = by(lambda c: c["test"]["offline"])
    out = {"chips": len(chips), "noisy": statistics_of(noisy), "offline": statistics_of(offline),
           "offline_vs_noisy": paired(offline, noisy), "online": {}, "windows": {}, "transfer": {}, "served": {}}
    for n in chips[0]["online"]:
        online = by(lambda c: c["online"][n])
        out["online"][n] = {"ppl": statistics_of(online), "vs_offline": paired(online, offline),
                            "vs_noisy": paired(online, noisy)}
        if "online_contiguous" in chips[0]:
            first = by(lambda c: c["online_contiguous"][n])
            out["online"][n].update(contiguous_vs_offline=paired(first, offline), contiguous_vs_noisy=paired(first, noisy))
    for key in chips[0]["windows"]:
        ppl = by(lambda c: c["windows"][key]["ppl"])
        out["windows"][key] = {"levels": chips[0]["windows"][key]["levels"], "ppl": statistics_of(ppl),
                               "vs_noisy": paired(ppl, noisy), "vs_offline": paired(ppl, offline)}
    for target in chips[0]["transfer"]:
        base = by(lambda c: c["transfer"][target]["noisy"])
        out["transfer"][target] = {source: {"ppl": statistics_of(by(lambda c: c["transfer"][target][source])),
                                            "vs_noisy": paired(by(lambda c: c["transfer"][target][source]), base)}
                                   for source in chips[0]["transfer"][target]}
    base = by(lambda c: c["served"]["noisy"]["ppl"])
    for name in chips[0]["served"]:
        ppl = by(lambda c: c["served"][name]["ppl"])
        out["served"][name] = {"ppl": statistics_of(ppl), "vs_noisy": paired(ppl, base),
                               "refits": chips[0]["served"][name]["refits"],
                               "steps": [sum(c["served"][name]["steps"][i] for c in chips) / len(chips)
                                         for i in range(len(chips[0]["served"][name]["steps"]))]}
    return out


def fmt(d: dict | None) -> str:
    if not d or d.get("mean") is None:
        return "–"
    low, high = d.get("low"), d.get("high")
    return f"{d['mean']:+.1f} % [{low:+.1f}, {high:+.1f}]" if low is not None else f"{d['mean']:+.1f} %"


def tables(summary: dict) -> str:
    """The generated section of docs/in-service.md."""
    lines = []
    cells = summary["fit_serve"]["cells"]
    if cells:
        lines += ["**Fit once, serve later** (`romer run in-service`, `romer run in-service-router-digital`; "
                  "PPL change vs the unrepaired chip at the same time, paired by chip, mean [95 % t-interval]; "
                  "last column: the plan fitted at 1 h against a fresh fit at t)", "",
                  "| model | repair | preset | t | chips | noisy PPL | refitted at t | fitted at 1 h | router digital | "
                  "fitted at 1 h vs refitted |", "|---|---|---|---|---:|---:|---:|---:|---:|---:|"]
        for c in sorted(cells, key=lambda c: (c["model"], c["repair"], c["preset"], c["t"])):
            lines.append(f"| {c['model']} | {c['repair']} | {c['preset']} | {TIMES.get(c['t'], c['t'])} | "
                         f"{c['refit']['chips']} | {c['noisy']['mean']:.2f} | {fmt(c['refit_vs_noisy'])} | "
                         f"{fmt(c['once_vs_noisy'])} | {fmt(c.get('router_digital_vs_noisy'))} | "
                         f"{fmt(c['once_vs_refit'])} |")
        for key, what in (("mean", "the mean over chips"), ("high", "the 95 % interval's upper end")):
            lines += ["", f"Within 1 % of a fresh fit ({what} of *fitted at 1 h vs refitted* ≤ +1 % at every t up "
                      "to): " + "; ".join(f"{' '.join(k)}: {TIMES.get(t, t) if t else 'not even 1 h'}"
                                           for k, t in within_one_percent(cells, key).items())]
        lines.append("")
    m = summary["monitor"]
    if m:
        lines += [f"**Online vs offline P1** (`python scripts/in_service.py measure`; default chip, {m['chips']} "
                  "chips, first 1,024 test tokens; change vs offline P1 on 16 train windows, paired by chip; "
                  f"offline P1 itself: {fmt(m['offline_vs_noisy'])} vs the noisy chip)", "",
                  "| validation windows (512 tokens) | drawn across the split: vs offline P1 | vs noisy | the served "
                  "stream's first windows: vs offline P1 | vs noisy |", "|---:|---:|---:|---:|---:|"]
        lines += [f"| {n} | {fmt(v['vs_offline'])} | {fmt(v['vs_noisy'])} | {fmt(v.get('contiguous_vs_offline'))} | "
                  f"{fmt(v.get('contiguous_vs_noisy'))} |" for n, v in m["online"].items()]
        lines += ["", f"**Served stream** ({STREAM_TOKENS:,} validation tokens, each 512-token step scored before any refit that "
                  "uses it; PPL change vs the noisy chip on the same stream)", "", "| routing | PPL | vs noisy |",
                  "|---|---:|---:|"]
        lines += [f"| {name} | {v['ppl']['mean']:.2f} | {fmt(v['vs_noisy'])} |" for name, v in m["served"].items()]
        lines += ["", "**Calibration windows and percentiles** (train windows of 512 tokens; test tokens; change vs "
                  "the noisy chip)", "", "| windows | percentiles | vs noisy | vs offline (16 windows, (1, 99)) |",
                  "|---:|---|---:|---:|"]
        for key, v in m["windows"].items():
            n, rule = key.split("/")
            lo, hi = v["levels"]
            lines.append(f"| {n} | {'(1, 99)' if rule == 'fixed' else f'rule ({lo:.2f}, {hi:.2f})'} | "
                         f"{fmt(v['vs_noisy'])} | {fmt(v['vs_offline'])} |")
        sources = [k for k in next(iter(m["transfer"].values())) if k != "noisy"]
        lines += ["", "**Transfer across sources** (P1 on 4 train windows of one source, or 16 of the mixed text; "
                  "1,024 validation tokens of each source; user: this repository's docs, first half calibrating, "
                  "second half scored; change vs the noisy chip)", "",
                  "| evaluated on | " + " | ".join(f"calibrated on {k}" for k in sources) + " |",
                  "|---|" + "---:|" * len(sources)]
        for target, row in m["transfer"].items():
            lines.append(f"| {target} | " + " | ".join(fmt(row[k]["vs_noisy"]) for k in sources) + " |")
    return "\n".join(lines) + "\n"


def within_one_percent(cells: list[dict], key: str = "high") -> dict:
    """Per (model, repair, preset), the latest t (None: not even the first) such that at every t up to it the plan fitted at 1 h is within +1 % of the fresh
    fit (its paired change's ``key``, "mean" or the interval's "high" end, ≤ 1 %)."""
    out = {}
    for group in dict.fromkeys((c["model"], c["repair"], c["preset"]) for c in cells):
        last = None
        for c in sorted((c for c in cells if (c["model"], c["repair"], c["preset"]) == group), key=lambda c: c["t"]):
            value = c["once_vs_refit"].get(key)
            if value is None or value > 1.0:
                break
            last = c["t"]
        out[group] = last
    return out


def _time_panel(ax, cells: list[dict]) -> None:
    """PPL over t of one model and preset: no repair, router digital, each repair fitted at 1 h and refitted."""
    curves = [("noisy", "P1", "no repair"), ("router_digital", "P1", "router digital")]
    curves += [(key, repair, f"{repair} {what}") for repair in REPAIRS.values()
               for key, what in (("once", "fitted at 1 h"), ("refit", "refitted at t"))]
    for key, repair, label in curves:
        rows = sorted((c for c in cells if c["repair"] == repair), key=lambda c: c["t"])
        shown = [c for c in rows if c.get(key) and c[key]["mean"] is not None]  # a partial run: where it has them
        if shown:
            ax.errorbar([c["t"] for c in shown], [c[key]["mean"] for c in shown],
                        yerr=[c[key]["std"] or 0 for c in shown], marker="o", capsize=3, label=label)
    ax.set_xscale("log")
    ax.set_xlabel("t after programming (s)")
    ax.set_ylabel("PPL (mean ± std over chips)")
    ax.legend(fontsize=7)


def time_plot(cells: list[dict]) -> bytes:
    import io

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models, presets = list(dict.fromkeys(c["model"] for c in cells)), list(dict.fromkeys(c["preset"] for c in cells))
    fig, axes = plt.subplots(len(models), len(presets), figsize=(5 * len(presets), 3.6 * len(models)), squeeze=False)
    for row_axes, model in zip(axes, models):
        for ax, preset in zip(row_axes, presets):
            _time_panel(ax, [c for c in cells if (c["model"], c["preset"]) == (model, preset)])
            ax.set_title(f"{model}, {preset}")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


def run_summary(args) -> int:
    from romer.io import replace_between_markers, write_bytes_atomic, write_text_atomic

    summary = {"fit_serve": fit_serve_summary(), "monitor": monitor_summary()}
    OUT.mkdir(parents=True, exist_ok=True)
    write_text_atomic(OUT / "summary.json", json.dumps(summary, indent=1, allow_nan=False) + "\n")
    if summary["fit_serve"]["cells"]:
        write_bytes_atomic(ROOT / "docs" / "in-service-time.png", time_plot(summary["fit_serve"]["cells"]))
    text = tables(summary)
    print(text)
    if args.update_doc:  # the in-service section of docs/in-service.md
        replace_between_markers(ROOT / "docs" / "in-service.md", "<!-- in-service:begin -->",
                                "<!-- in-service:end -->", text.strip("\n"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
