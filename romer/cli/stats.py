"""`romer stats`: per-layer routing statistics, clean or against a simulated chip, and oracle routing."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from romer.cli.common import (ALLOW_PICKLE_HELP, DATA_PATH_HELP, DATASET_HELP, DEVICE_HELP, DEVICE_MAP_HELP,
                              DTYPE_HELP, MAPPING_HELP, MODEL_HELP, PLACEMENT_HELP, PRESET_HELP, SET_HELP, T_HELP,
                              TRUST_REMOTE_CODE_HELP, check_at_least, check_window, chip_from_options, load_options,
                              user_errors)
from romer.cli.output import JSON_HELP, console, table, write_json
from romer.errors import UserError


@user_errors
def stats_command(
    model: str = typer.Option(..., "--model", help=MODEL_HELP),
    preset: Optional[str] = typer.Option(None, help=PRESET_HELP + "; without it: clean routing only."),
    chips: int = typer.Option(5, help="Number of simulated chips."),
    seed: int = typer.Option(0, help="Seed of the first chip."),
    t: float = typer.Option(86400.0, "--t", help=T_HELP),
    placement: str = typer.Option("moe", help=PLACEMENT_HELP),
    mapping: str = typer.Option("expert", help=MAPPING_HELP),
    settings: list[str] = typer.Option([], "--set", help=SET_HELP),
    dataset: str = typer.Option("bundled", "--dataset", help=DATASET_HELP),
    data_path: Optional[str] = typer.Option(None, "--data-path", help=DATA_PATH_HELP),
    split: str = typer.Option("validation", help="Split of the dataset."),
    max_chars: Optional[int] = typer.Option(None, help="Only the first N characters of the split."),
    window: int = typer.Option(512, help="Model input length in tokens, including the BOS token."),
    json_path: Optional[str] = typer.Option(None, "--json", help=JSON_HELP),
    plots: Optional[Path] = typer.Option(None, help="Write routing plots (PNG) into this folder."),
    device: str = typer.Option("cpu", "--device", help=DEVICE_HELP),
    dtype: str = typer.Option("float32", "--dtype", help=DTYPE_HELP),
    device_map: Optional[str] = typer.Option(None, "--device-map", help=DEVICE_MAP_HELP),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help=ALLOW_PICKLE_HELP),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help=TRUST_REMOTE_CODE_HELP),
):
    """Per-layer routing statistics (load balance, clean-vs-noisy agreement) and oracle routing; weight and
    router-logit SNR, the router-noise account (what a per-expert affine fix can recover) and CIM array load."""
    from romer.data import load_dataset_text
    from romer.experiment.routing_study import fmt, physical_rows, routing_study
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
