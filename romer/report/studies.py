"""Tables of the studies (``romer.studies``) from their result dicts: the noise-sensitivity markdown table and the
routing study's cells. Formatting only: nothing here measures."""

from __future__ import annotations

import io

from matplotlib.figure import Figure


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


def per_layer_plot(rows: list[dict], figures: dict) -> bytes:
    """The per-layer account: measured P1 gain against the predicted one, all points and zoomed on the bulk (PNG)."""
    fig = Figure(figsize=(11, 4.8))
    scales = sorted({row["scale"] for row in rows})
    rest = figures["without_largest"]
    for panel, (title, zoom) in enumerate(((f"all {len(rows)} points: Pearson r = "
                                            f"{figures['all']['pearson_predicted_gain']:.2f}", False),
                                           (f"without the largest: r = {rest['pearson_predicted_gain']:.2f}, "
                                            f"Spearman ρ = {rest['spearman_predicted_gain']:.2f}", True))):
        ax = fig.add_subplot(1, 2, panel + 1)
        for k, name in enumerate(dict.fromkeys(row["model"] for row in rows)):
            for j, scale in enumerate(scales):
                pts = [row for row in rows if row["model"] == name and row["scale"] == scale]
                ax.scatter([100 * p["predicted_gain"] for p in pts], [100 * p["measured_gain"] for p in pts], s=14,
                           color=f"C{k}", marker="os^D"[j % 4], label=f"{name} ×{scale:g}")
        shown = sorted(100 * row["predicted_gain"] for row in rows)[:-1] if zoom else [100 * r["damage"] for r in rows]
        lim = [min(0, *(100 * row["measured_gain"] for row in rows)) if not zoom else -1.0, max(shown)]
        ax.plot(lim, lim, color="0.6", lw=0.8)
        if zoom:
            ax.set_xlim(-0.5, max(shown) * 1.05)
            ax.set_ylim(-3.5, 6)
        ax.set_xlabel("predicted: routing damage of layer l × affine share  (% of ln PPL)")
        ax.set_ylabel("measured: P1 in layer l only  (% of ln PPL)")
        ax.set_title(title, fontsize=9)
        if panel == 0:
            ax.legend(fontsize=7)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    return buffer.getvalue()
