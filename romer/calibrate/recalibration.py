"""Fit the digital router corrections (ROMER step 2, and the bias-balancing baseline) from routing statistics.

Percentiles are per expert over the calibration tokens: Qn_e(p) of the chip-programmed model's router logits,
Qr_e(p) of the reference (the clean model's, or their average over experts for reference "average").
"""

from __future__ import annotations

import math

import torch

from romer.calibrate.config import BalanceConfig, RecalibrateConfig
from romer.calibrate.routing_rule import RouterFix
from romer.routing.recorder import LayerRouting


def _reference(q_clean: torch.Tensor, reference: str) -> torch.Tensor:
    """[E, P] reference percentiles: each expert's own, or the expert-average broadcast to every expert."""
    if reference == "average":
        return q_clean.mean(dim=0, keepdim=True).expand_as(q_clean)
    return q_clean


def fit_quantile(noisy: LayerRouting, clean: LayerRouting, config: RecalibrateConfig, fix: RouterFix) -> RouterFix:
    """P1: z' = (z − Qn(50)) / (Qn(hi) − Qn(lo)) · (Qr(hi) − Qr(lo)) + Qr(50), i.e. scale and offset per expert.
    An expert whose noisy spread is zero (never seen, or constant) keeps scale 1 and is only shifted."""
    lo, hi = config.percentiles
    qn = noisy.percentiles((lo, 50.0, hi))
    qr = _reference(clean.percentiles((lo, 50.0, hi)), config.reference)
    spread_n, spread_r = qn[:, 2] - qn[:, 0], qr[:, 2] - qr[:, 0]
    ok = torch.isfinite(spread_n) & (spread_n > 0) & torch.isfinite(spread_r)
    scale = torch.where(ok, spread_r / torch.where(ok, spread_n, 1.0), 1.0)
    offset = torch.where(torch.isfinite(qn[:, 1]) & torch.isfinite(qr[:, 1]), qr[:, 1] - scale * qn[:, 1], 0.0)
    fix.scale, fix.offset, fix.apply_to = scale.tolist(), offset.tolist(), config.apply_to
    return fix


def fit_shift(noisy: LayerRouting, clean: LayerRouting, config: RecalibrateConfig, fix: RouterFix) -> RouterFix:
    """P2: selection bias b_e = Qr_e(p) − Qn_e(p); the gate weights keep the router's own logits."""
    qn = noisy.percentiles((config.p,))[:, 0]
    qr = _reference(clean.percentiles((config.p,)), config.reference)[:, 0]
    bias = torch.where(torch.isfinite(qn) & torch.isfinite(qr), qr - qn, 0.0)
    fix.selection_bias, fix.apply_to = bias.tolist(), "selection"
    return fix


def fit_token(clean_scale: float, config: RecalibrateConfig, fix: RouterFix) -> RouterFix:
    """P3: z'_t = z_t · S_r / Q_p(|z_t|), S_r = mean over clean calibration tokens of Q_p(|z_t|)."""
    if not math.isfinite(clean_scale) or clean_scale <= 0:
        return fix
    fix.token_p, fix.token_scale, fix.apply_to = config.p, clean_scale, config.apply_to
    return fix


def fit_lstsq(noisy_logits: torch.Tensor, clean_logits: torch.Tensor, config: RecalibrateConfig,
              fix: RouterFix) -> RouterFix:
    """Per expert, z' = a·z + b minimising Σ_t (a·z_n,t + b − z_c,t)² over paired calibration tokens [T, E]:
    a = cov(z_n, z_c) / var(z_n), b = mean z_c − a·mean z_n (float64). An expert whose noisy logits do not vary
    keeps a = 1 and is only shifted, b = mean(z_c − z_n)."""
    if noisy_logits.shape != clean_logits.shape:
        raise ValueError(f"lstsq needs paired logits: noisy {tuple(noisy_logits.shape)}, clean "
                         f"{tuple(clean_logits.shape)}")
    zn, zc = noisy_logits.double(), clean_logits.double()
    mn, mc = zn.mean(0), zc.mean(0)
    var = (zn - mn).square().mean(0)
    cov = ((zn - mn) * (zc - mc)).mean(0)
    ok = var > 1e-12 * (mn.abs() + 1).square()
    scale = torch.where(ok, cov / torch.where(ok, var, 1.0), 1.0)
    fix.scale, fix.offset, fix.apply_to = scale.tolist(), (mc - scale * mn).tolist(), config.apply_to
    return fix


FITTERS = {"quantile": fit_quantile, "shift": fit_shift}
FAR = 2.0 ** 100  # beyond any logit plus bias: an entry offset by it drops out of a min (or max) over a row


@torch.no_grad()
def fit_balance_bias(logits: torch.Tensor, top_k: int, config: BalanceConfig, masked: list[int] = ()) -> list[float]:
    """A selection bias b [E] so that top-k of z + b gives every (selectable) expert about the same load on the
    calibration logits z [T, E]: b_e += step·std(z)·sign(mean load − load_e), ``iterations`` times.

    Exactly the loop that takes top-k of every token at every step, done faster: a token's top-k set cannot change
    while the gap between its k-th and (k+1)-th choice exceeds what the bias has moved since (at most
    max(Δb) − min(Δb) per step, plus float rounding), so only tokens whose gap may have closed are looked at
    again, and of those only the ones whose gap has closed are ranked again.
    """
    z = logits.float()
    tokens, num_experts = z.shape
    selectable = torch.ones(num_experts, dtype=torch.bool)
    selectable[list(masked)] = False
    bias = torch.zeros(num_experts)
    step = config.step * float(z.std())
    masking = not bool(selectable.all())
    ranked = min(top_k + 1, int(selectable.sum()))  # the (k+1)-th choice bounds how far the k-th is from losing
    chosen = torch.zeros(tokens, num_experts, dtype=torch.bool)
    slack = torch.full((tokens,), -math.inf)  # a lower bound of each token's current gap; ≤ 0: rank it again
    load = torch.zeros(num_experts, dtype=torch.int64)
    # float32 rounding of z + b (and of b's own sums) is below this at every step, whatever the bias reaches
    rounding = 8 * torch.finfo(torch.float32).eps * (float(z.abs().max()) + config.iterations * step)
    for _ in range(config.iterations):
        rows = torch.nonzero(slack <= rounding).squeeze(1)
        if rows.numel():
            # the exact gap of each candidate's current set (weakest chosen − strongest other): where it is still
            # open the set stands and the gap becomes its new slack; only the others are ranked again
            choice = z[rows] + bias
            held = chosen[rows]
            apart = held.to(z.dtype) * FAR  # adds exactly 0 to the side a reduction keeps, ±FAR to the other
            weakest = (choice + (FAR - apart)).amin(1)
            if masking:
                choice.masked_fill_(~selectable, -math.inf)
            gap = weakest - (choice - apart).amax(1)
            stands = (gap > rounding) & (held.sum(1) == top_k)
            slack[rows[stands]] = gap[stands]
            rows, choice = rows[~stands], choice[~stands]
        if rows.numel():
            top = torch.topk(choice, ranked, dim=-1)
            fresh = torch.zeros(rows.numel(), num_experts, dtype=torch.bool)
            fresh.scatter_(1, top.indices[:, :top_k], True)
            load += fresh.sum(0) - chosen[rows].sum(0)
            chosen[rows] = fresh
            slack[rows] = (top.values[:, top_k - 1] - top.values[:, top_k] if ranked > top_k
                           else torch.full((rows.numel(),), math.inf))
        target = load.float()[selectable].mean()
        delta = step * torch.sign(target - load.float()) * selectable
        bias += delta
        slack -= float(delta.max() - delta.min()) + rounding
    return bias.tolist()
