"""Tables of the studies (``romer.studies``) from their result dicts: the noise-sensitivity markdown table and the
routing study's cells. Formatting only: nothing here measures."""

from __future__ import annotations


def _cell(v: dict) -> str:
    return f"{v['ppl_mean']:.2f} ± {v['ppl_std']:.2f}"


def _level(x: float | None, levels) -> str:
    return f"> {max(levels):g}" if x is None else f"{x:.3g}"


def sensitivity_markdown(results: list[dict]) -> str:
    """README table: clean PPL, then per placement PCM over time, PCM with scaled noise at 1 day, and the noise
    levels that double PPL (mean ± std over chips)."""
    levels = results[0]["levels"]
    times, scales = levels["pcm_times"], [k for k in levels["pcm_scales"] if k != 1.0]
    head = (["model", "placement", "clean"] + [f"pcm {t}" for t in times] + [f"pcm ×{k:g} (1 day)" for k in scales]
            + ["pcm scale for 2× PPL", "gaussian η for 2× PPL"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        for pl, row in r["placements"].items():
            cells = ([f"`{r['model']}`", pl, f"{r['clean_ppl']:.2f}"]
                     + [_cell(row["pcm_time"][t]) for t in times]
                     + [_cell(row["pcm_scaled"][str(k)]) for k in scales]
                     + [_level(row["pcm_doubling_scale"], levels["pcm_scales"]),
                        _level(row["gaussian_doubling_eta"], levels["gaussian_etas"])])
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def fmt(stat: dict, digits: int = 2) -> str:
    """"mean ± std" of a ``_mean_std`` dict."""
    if stat["mean"] is None:
        return "—"
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def physical_rows(result: dict) -> list[dict]:
    """Per MoE layer, the study's physical figures as table cells (means over chips): weight SNR of the router and
    the routed experts, router-logit SNR, router-input anisotropy (the predicted systematic share), the systematic
    and affine shares of the router noise (weight account / measured), the router's own share of its logit noise
    and the array utilisation (clean → noisy). Without a chip only the clean inputs' figures."""
    if "per_layer" not in result:
        return [{"layer": r["layer"], "anisotropy": f"{r['anisotropy']:.3f}", "mean cos": f"{r['mean_cosine']:.3f}",
                 "utilisation": f"{c['utilisation']:.3f}"}
                for r, c in zip(result["router_inputs"], result["cim_load"]["clean"]["layers"])]

    def m(stat: dict, digits: int) -> str:
        return "—" if stat["mean"] is None else f"{stat['mean']:.{digits}f}"

    return [{"layer": r["layer"], "W SNR dB router/experts": f"{m(r['router_snr_db'], 1)} / {m(r['experts_snr_db'], 1)}",
             "logit SNR dB": m(r["logit_snr_db"], 1), "anisotropy": f"{r['anisotropy']:.3f}",
             "systematic W/meas.": f"{m(r['systematic_share'], 2)} / {m(r['measured_systematic_share'], 2)}",
             "affine W/meas.": f"{m(r['affine_share'], 2)} / {m(r['measured_affine_share'], 2)}",
             "own noise": m(r["router_own_share"], 2),
             "utilisation clean→noisy": f"{r['clean_utilisation']:.2f} → {m(r['utilisation'], 2)}"}
            for r in result["per_layer"]]
