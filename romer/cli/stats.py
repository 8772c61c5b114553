"""`romer stats`: per-layer routing statistics, clean or against a simulated chip, and oracle routing."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from romer.cli.common import (ALLOW_PICKLE_OPTION, BATCH_OPTION, DATASET_OPTION, DATA_PATH_OPTION, DEVICE_MAP_OPTION,
                              DEVICE_OPTION, DTYPE_OPTION, IO_OPTION, MAPPING_OPTION, MAX_TOKENS_OPTION, MODEL_OPTION,
                              ORDER_OPTION, PLACEMENT_OPTION, PRESET_HELP, SEED_OPTION, SET_OPTION, SPLIT_OPTION,
                              TRUST_REMOTE_CODE_OPTION, T_OPTION, WINDOW_OPTION, announce, chip_from, chip_given,
                              chip_label, check_writable, data_given, eval_spec, load_options, model_label,
                              resolve_settings, user_errors)
from romer.cli.output import JSON_HELP, console, table, write_json

@user_errors
def stats_command(
    model: str = MODEL_OPTION,
    preset: Optional[str] = typer.Option(None, "--preset", help=PRESET_HELP + ". Without it: clean routing only."),
    chips: Optional[int] = typer.Option(None, "--chips", help="Number of simulated chips (default 5)."),
    seed: Optional[int] = SEED_OPTION,
    t: Optional[float] = T_OPTION,
    placement: Optional[str] = PLACEMENT_OPTION,
    mapping: Optional[str] = MAPPING_OPTION,
    io: Optional[str] = IO_OPTION,
    settings: list[str] = SET_OPTION,
    dataset: Optional[str] = DATASET_OPTION,
    data_path: Optional[str] = DATA_PATH_OPTION,
    split: Optional[str] = SPLIT_OPTION,
    order: Optional[str] = ORDER_OPTION,
    max_tokens: Optional[int] = MAX_TOKENS_OPTION,
    window: Optional[int] = WINDOW_OPTION,
    batch_size: Optional[int] = BATCH_OPTION,
    json_path: Optional[str] = typer.Option(None, "--json", help=JSON_HELP),
    plots: Optional[Path] = typer.Option(None, help="Write routing plots (PNG) into this folder."),
    device: Optional[str] = DEVICE_OPTION,
    dtype: Optional[str] = DTYPE_OPTION,
    device_map: Optional[str] = DEVICE_MAP_OPTION,
    allow_pickle: bool = ALLOW_PICKLE_OPTION,
    trust_remote_code: bool = TRUST_REMOTE_CODE_OPTION,
):
    """Per-layer routing statistics (load balance, clean-vs-noisy agreement) and oracle routing; weight and
    router-logit SNR, the router-noise account (what a per-expert affine fix can recover) and CIM array load."""
    from romer.report.studies import fmt, physical_rows
    from romer.studies.routing_study import routing_study
    from romer.models import load_model
    from romer.routing import RoutingStats

    data = resolve_settings("stats", {**chip_given(preset, chips, seed, t, placement, mapping, io),
                                      **data_given(dataset, data_path, split, order, max_tokens, window,
                                                   batch_size, device=device, dtype=dtype)}, settings)
    chip, chips = chip_from(data["chip"])
    spec = eval_spec(data["eval"])
    check_writable(json_path, "--json")
    to_stdout = json_path == "-"
    lm, tokenizer = load_model(model, **load_options(data["eval"], device_map, allow_pickle, trust_remote_code))
    out, name = console(), model_label(model)
    announce(out, chip_label(chip, chips) if chip else "none (clean routing only)", spec.label, stderr=to_stdout)
    result = routing_study(lm, tokenizer, spec.text(tokenizer), chip, chips=chips, window=spec.window,
                           batch_size=spec.batch_size, progress=not to_stdout)
    records = result.pop("records")
    if plots is not None:
        from romer.routing.plots import write_routing_plots

        write_routing_plots(records["clean"], records.get("noisy", records["clean"]), plots,
                            prefix=f"{name}_")
    if write_json(json_path, {"model": model, "split": spec.split, "eval": spec.describe(), "text": spec.label,
                              **result}):
        return
    shown = (RoutingStats.from_record(records["noisy"], reference=records["clean"]) if chip
             else RoutingStats.from_record(records["clean"]))
    rows = shown.table_rows()
    title = f"{name}: routing per layer, " + (f"chip seed {chip.seed} vs clean" if chip else "clean")
    out.print(table(title, list(rows[0]), [list(row.values()) for row in rows], keys=()))
    if chip:
        s = result["summary"]
        out.print(f"over {chips} chips: PPL clean {result['clean_ppl']:.2f}, noisy {fmt(s['noisy_ppl'])}, "
                  f"oracle routing {fmt(s['oracle_ppl'])}; routing share of the damage "
                  f"{fmt(s['routing_share'])}; load CV {fmt(s['cv'], 3)}; Jaccard {fmt(s['jaccard'], 3)}")
        if s["routing_share"].get("withheld"):
            out.print(f"routing share not shown: {s['routing_share']['withheld']}")
    physical = physical_rows(result)
    out.print(table("signal-to-noise, router-noise account, array load" + (" (mean over chips)" if chip else ""),
                    list(physical[0]), [list(row.values()) for row in physical], keys=()))
    if chip:
        out.print("systematic: share of the router-logit noise a per-expert offset removes (W: the router's own weight "
                  "noise on clean inputs; meas.: clean vs chip logits); affine: a per-expert least-squares scale and "
                  "offset; anisotropy ‖x̄‖²/E‖x‖² of the router inputs predicts the systematic share for i.i.d. "
                  "weight noise; own noise: the router's weight noise / all its logit noise")
        out.print(f"weight SNR router {fmt(s['router_snr_db'], 1)} dB, experts {fmt(s['experts_snr_db'], 1)} dB; "
                  f"MoE throughput vs clean (busiest array per layer): noisy {fmt(s['throughput_noisy'])}, "
                  f"+ replacement as averaged replicas {fmt(s['throughput_replica'])}, "
                  f"+ replicas sharing traffic {fmt(s['throughput_shared'])}")
    if plots is not None:
        out.print(f"plots in {plots}")
