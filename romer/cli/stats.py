"""`romer stats`: per-layer routing statistics, clean or against a simulated chip, and oracle routing."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from romer.cli.common import (ALLOW_PICKLE_OPTION, DATASET_OPTION, DATA_PATH_OPTION, DEVICE_MAP_OPTION, DEVICE_OPTION,
                              DTYPE_OPTION, MAPPING_OPTION, MODEL_OPTION, PLACEMENT_OPTION, PRESET_HELP, SEED_OPTION,
                              SET_OPTION, TRUST_REMOTE_CODE_OPTION, T_OPTION, WINDOW_OPTION, check_at_least,
                              check_window, chip_from_options, load_options, user_errors)
from romer.cli.output import JSON_HELP, console, table, write_json
from romer.errors import UserError


@user_errors
def stats_command(
    model: str = MODEL_OPTION,
    preset: Optional[str] = typer.Option(None, help=PRESET_HELP + "; without it: clean routing only."),
    chips: int = typer.Option(5, help="Number of simulated chips."),
    seed: int = SEED_OPTION,
    t: float = T_OPTION,
    placement: str = PLACEMENT_OPTION,
    mapping: str = MAPPING_OPTION,
    settings: list[str] = SET_OPTION,
    dataset: str = DATASET_OPTION,
    data_path: Optional[str] = DATA_PATH_OPTION,
    split: str = typer.Option("validation", help="Split of the dataset."),
    max_chars: Optional[int] = typer.Option(None, help="Only the first N characters of the split."),
    window: int = WINDOW_OPTION,
    json_path: Optional[str] = typer.Option(None, "--json", help=JSON_HELP),
    plots: Optional[Path] = typer.Option(None, help="Write routing plots (PNG) into this folder."),
    device: str = DEVICE_OPTION,
    dtype: str = DTYPE_OPTION,
    device_map: Optional[str] = DEVICE_MAP_OPTION,
    allow_pickle: bool = ALLOW_PICKLE_OPTION,
    trust_remote_code: bool = TRUST_REMOTE_CODE_OPTION,
):
    """Per-layer routing statistics (load balance, clean-vs-noisy agreement) and oracle routing; weight and
    router-logit SNR, the router-noise account (what a per-expert affine fix can recover) and CIM array load."""
    from romer.data import load_dataset_text
    from romer.report.studies import fmt, physical_rows
    from romer.studies.routing_study import routing_study
    from romer.models import load_model
    from romer.routing import RoutingStats

    check_window(window)
    check_at_least("--chips", chips)
    if settings and not preset:
        raise UserError("--set needs --preset")
    chip = chip_from_options(preset, placement, mapping, seed, t, settings) if preset else None
    to_stdout = json_path == "-"
    text = load_dataset_text(dataset, data_path, split)[:max_chars]
    lm, tokenizer = load_model(model, **load_options(device, dtype, device_map, allow_pickle, trust_remote_code))
    result = routing_study(lm, tokenizer, text, chip, chips=chips, window=window, progress=not to_stdout)
    records = result.pop("records")
    if plots is not None:
        from romer.routing.plots import write_routing_plots

        write_routing_plots(records["clean"], records.get("noisy", records["clean"]), plots,
                            prefix=f"{Path(model).name}_")
    if write_json(json_path, {"model": model, "split": split, "max_chars": max_chars, **result}):
        return
    shown = (RoutingStats.from_record(records["noisy"], reference=records["clean"]) if chip
             else RoutingStats.from_record(records["clean"]))
    rows = shown.table_rows()
    title = f"{model} on {split}: " + (f"chip seed {seed} vs clean ({chip.placement_name()})" if chip else "clean")
    out = console()
    out.print(table(title, list(rows[0]), [list(row.values()) for row in rows], keys=()))
    if chip:
        s = result["summary"]
        out.print(f"over {chips} chips: PPL clean {result['clean_ppl']:.2f}, noisy {fmt(s['noisy_ppl'])}, "
                  f"oracle routing {fmt(s['oracle_ppl'])}; routing share of the damage "
                  f"{fmt(s['routing_share'])}; load CV {fmt(s['cv'], 3)}; Jaccard {fmt(s['jaccard'], 3)}")
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
