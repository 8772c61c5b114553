"""A predictive account of router noise: which part of the router-logit noise a per-expert affine fix can remove.

A router is linear: z = W·x + b, with x [H] the router input of one token and W [E, H]. Static weight noise
ΔW = W_chip − W (weight units) gives logit noise, per expert e and token t,

    Δz_te = ΔW_e·x_t = ΔW_e·x̄  +  ΔW_e·(x_t − x̄)          (x̄ = mean router input over the calibration tokens)
                       systematic   per-token

The systematic part s_e = ΔW_e·x̄ is the same for every token: a per-expert offset (P1, P2, bias balancing) removes
it. The per-token part has zero mean over tokens and is what only the oracle can undo. Over tokens and experts,

    total  = Σ_e E_t[Δz_te²] = Σ_e (s_e² + Var_t Δz_te) = Σ_e ΔW_e S ΔW_eᵀ,   S = E[x xᵀ] (second moment)
    systematic share  = Σ_e s_e² / total                                          ∈ [0, 1]

is the **recoverable share of the logit-noise variance** for a per-expert offset. A per-expert affine fix
z_c ≈ a_e·z_chip + b_e (least squares over tokens, the most any per-expert scale-and-offset such as P1 can do)
leaves Var(z_c) − Cov(z_c, z_chip)² / Var(z_chip) per expert, so its share is

    affine share = 1 − Σ_e [Var z_c,e − Cov(z_c,e, z_chip,e)² / Var z_chip,e] / total    (≥ systematic share).

**Prediction from the inputs alone.** If ΔW's entries are independent with zero mean and variance σ² (as for
programming noise of roughly equal-conductance weights), E[s_e²] = σ²‖x̄‖² and E[ΔW_e S ΔW_eᵀ] = σ² E‖x‖², so

    expected systematic share = ‖x̄‖² / E‖x‖²          (the router inputs' anisotropy, ∈ [0, 1]):

the more the tokens' router inputs share one direction, the more of the router's weight noise P1 can repair.
The mean pairwise cosine of the inputs, E_{t≠t'} cos(x_t, x_t'), is reported beside it (it ignores the norms).

Two measurements per layer. The **weight account** applies the chip's actual ΔW to the clean model's router
inputs (from the streamed moments x̄, S: no token is stored): the router's own noise. The **measured account**
pairs the clean and the chip-programmed model's logits on the same tokens (``record_logit_noise``), so it also
holds the noise that reaches the router through its input (earlier noisy layers): what P1 actually faces. The
logit SNR is ‖z_clean‖ / ‖z_chip − z_clean‖ (Frobenius over tokens × experts, logit units).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from romer.errors import UserError
from romer.models.view import MoELayer, moe_layers
from romer.routing.recorder import _MaskState, router_logits


class InputMoments:
    """Streaming moments of router inputs x [H] (float64, accumulated around the first batch's mean so that the
    covariance does not cancel catastrophically when the inputs are strongly anisotropic)."""

    def __init__(self, hidden: int):
        self.hidden, self.n, self.units = hidden, 0, 0
        self.shift: torch.Tensor | None = None
        self.sum_d = torch.zeros(hidden, dtype=torch.float64)
        self.sum_dd = torch.zeros(hidden, hidden, dtype=torch.float64)
        self.sum_unit = torch.zeros(hidden, dtype=torch.float64)
        self.sum_sq = 0.0

    def update(self, x: torch.Tensor) -> None:
        """Add the rows of ``x [tokens, H]``."""
        x = x.detach().reshape(-1, self.hidden).to("cpu", torch.float64)
        if x.shape[0] == 0:
            return
        if self.shift is None:
            self.shift = x.mean(0)
        d = x - self.shift
        self.sum_d += d.sum(0)
        self.sum_dd += d.T @ d
        norms = x.norm(dim=1, keepdim=True)
        nonzero = norms[:, 0] > 0
        self.sum_unit += (x[nonzero] / norms[nonzero]).sum(0)
        self.units += int(nonzero.sum())
        self.sum_sq += float(x.square().sum())
        self.n += x.shape[0]

    @property
    def mean(self) -> torch.Tensor:
        """x̄ [H]."""
        return self.shift + self.sum_d / self.n

    @property
    def covariance(self) -> torch.Tensor:
        """Population covariance C = E[(x − x̄)(x − x̄)ᵀ] [H, H]."""
        m = self.sum_d / self.n
        return self.sum_dd / self.n - torch.outer(m, m)

    @property
    def anisotropy(self) -> float:
        """‖x̄‖² / E‖x‖² ∈ [0, 1]: 1 when every token has the same input, ≈ 0 for isotropic zero-mean inputs."""
        return float(self.mean.square().sum()) / (self.sum_sq / self.n) if self.sum_sq > 0 else math.nan

    @property
    def mean_cosine(self) -> float:
        """E_{t≠t'} cos(x_t, x_t') = (‖Σ_t u_t‖² − n) / (n(n − 1)), u_t = x_t / ‖x_t‖ (zero inputs left out)."""
        n = self.units
        return (float(self.sum_unit.square().sum()) - n) / (n * (n - 1)) if n > 1 else math.nan


@dataclass(frozen=True)
class PairMoments:
    """Per-expert moments over the same tokens of clean logits z_c and chip logits z_n (each [E], float64)."""

    mean_c: torch.Tensor
    mean_n: torch.Tensor
    var_c: torch.Tensor
    var_n: torch.Tensor
    cov: torch.Tensor


class LogitPairs:
    """Streaming per-expert sums of paired clean / chip logits (accumulated around the first batch's clean mean)."""

    def __init__(self, experts: int):
        zeros = lambda: torch.zeros(experts, dtype=torch.float64)  # noqa: E731
        self.n, self.shift = 0, None
        self.s_c, self.s_n, self.s_cc, self.s_nn, self.s_cn = zeros(), zeros(), zeros(), zeros(), zeros()

    def update(self, clean: torch.Tensor, chip: torch.Tensor) -> None:
        c, z = clean.to("cpu", torch.float64), chip.to("cpu", torch.float64)
        if c.shape != z.shape:
            raise UserError(f"clean and chip router logits differ in shape ({tuple(c.shape)} vs {tuple(z.shape)}): "
                            "the chip run did not see the reference tokens")
        if c.shape[0] == 0:
            return
        if self.shift is None:
            self.shift = c.mean(0)
        c, z = c - self.shift, z - self.shift
        self.s_c += c.sum(0)
        self.s_n += z.sum(0)
        self.s_cc += c.square().sum(0)
        self.s_nn += z.square().sum(0)
        self.s_cn += (c * z).sum(0)
        self.n += c.shape[0]

    def moments(self) -> PairMoments:
        n = self.n
        mc, mn = self.s_c / n, self.s_n / n
        return PairMoments(mc + self.shift, mn + self.shift, self.s_cc / n - mc.square(), self.s_nn / n - mn.square(),
                           self.s_cn / n - mc * mn)


def weight_moments(inputs: InputMoments, w_clean: torch.Tensor, w_chip: torch.Tensor,
                   bias: torch.Tensor | None = None) -> PairMoments:
    """The pair moments that router weights W (clean) and W_chip give on inputs with moments x̄, C:
    mean = W x̄ + b, Var_e = W_e C W_eᵀ, Cov_e = W_e C W_chip,eᵀ (exact for a linear router)."""
    w, v = w_clean.to("cpu", torch.float64), w_chip.to("cpu", torch.float64)
    b = torch.zeros(w.shape[0], dtype=torch.float64) if bias is None else bias.to("cpu", torch.float64)
    xbar, cov = inputs.mean, inputs.covariance
    wc, vc = w @ cov, v @ cov
    return PairMoments(w @ xbar + b, v @ xbar + b, (wc * w).sum(1), (vc * v).sum(1), (wc * v).sum(1))


def noise_account(m: PairMoments) -> dict:
    """Logit SNR and the recoverable shares of the logit noise Δz = z_n − z_c (module docstring), from pair moments.

    ``logit_snr`` = √(Σ_e E z_c² / Σ_e E Δz²); ``systematic_share`` = Σ_e (E Δz_e)² / Σ_e E Δz_e²;
    ``affine_share`` = the share the per-expert least-squares affine z_c ≈ a_e z_n + b_e removes.
    """
    mean_d = m.mean_n - m.mean_c
    var_d = (m.var_n + m.var_c - 2 * m.cov).clamp_min(0)
    systematic = mean_d.square()
    total = float((systematic + var_d).sum())
    var_n = m.var_n.clamp_min(0)
    residual = torch.where(var_n > 0, m.var_c - m.cov.square() / var_n.clamp_min(1e-300), m.var_c)
    residual = torch.minimum(residual.clamp_min(0), var_d)  # the affine fix is never worse than an offset
    signal = float((m.mean_c.square() + m.var_c.clamp_min(0)).sum())
    snr = math.sqrt(signal / total) if total > 0 else math.inf
    return {"logit_snr": snr, "logit_snr_db": 20 * math.log10(snr) if 0 < snr < math.inf else snr,
            "noise_ms": total / m.mean_c.numel(),
            "systematic_share": float(systematic.sum()) / total if total > 0 else math.nan,
            "affine_share": 1 - float(residual.sum()) / total if total > 0 else math.nan}


# --- capture on a model ------------------------------------------------------------------------------------


@dataclass
class LayerInputs:
    """One MoE layer's clean router: input moments, its clean weights, and its logits per forward call."""

    layer: int
    moments: InputMoments
    weight: torch.Tensor  # [E, H] clean router weights (CPU copy)
    bias: torch.Tensor | None
    logits: list[torch.Tensor] = field(default_factory=list)  # [real tokens, E] float32 per forward call


@dataclass
class LayerLogitNoise:
    """One MoE layer on a chip: the router's programmed weights and its logits paired with the reference's."""

    layer: int
    chip_weight: torch.Tensor  # [E, H] router weights as programmed (CPU copy)
    pairs: LogitPairs
    calls: int = 0


def _mask_hooks(model: nn.Module, state: _MaskState) -> list:
    """The model pre-hook that reads each call's attention mask into ``state`` and the hook that clears it."""
    return [model.register_forward_pre_hook(state.read, with_kwargs=True), model.register_forward_hook(state.clear)]


@contextmanager
def record_router_inputs(model: nn.Module, keep_logits: bool = True) -> Iterator[list[LayerInputs]]:
    """While the block runs, stream every MoE router's inputs (real tokens only) into moments and, with
    ``keep_logits``, keep its logits (float32, tokens × E per layer) as the reference for ``record_logit_noise``.
    Moments cost H² float64 per layer (32 MiB at H = 2048). Hooks are removed on exit."""
    layers, state, handles = moe_layers(model), _MaskState(), []
    out = [LayerInputs(layer.index, InputMoments(layer.router_weight.shape[1]),
                       layer.router_weight.detach().to("cpu", torch.float64, copy=True),
                       None if layer.router_bias is None else layer.router_bias.detach().to("cpu", torch.float64,
                                                                                            copy=True))
           for layer in layers]

    def make(layer: MoELayer, rec: LayerInputs):
        @torch.no_grad()
        def hook(module, args, output):
            x = args[0].reshape(-1, layer.router_weight.shape[1])
            z = router_logits(layer, args, output)
            real = state.real(x.shape[0], x.device)
            if real is not None:
                x, z = x[real], z[real]
            rec.moments.update(x)
            if keep_logits:
                rec.logits.append(z.detach().to("cpu", torch.float32))
        return hook

    try:
        handles += _mask_hooks(model, state)
        handles += [layer.router.register_forward_hook(make(layer, rec)) for layer, rec in zip(layers, out)]
        yield out
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def record_logit_noise(model: nn.Module, reference: list[LayerInputs]) -> Iterator[list[LayerLogitNoise]]:
    """While the block runs the (chip-programmed) model over the reference's tokens in the same batches, pair every
    router's logits with the reference's. The router weights are read when the block is entered."""
    layers, state, handles = moe_layers(model), _MaskState(), []
    if [layer.index for layer in layers] != [ref.layer for ref in reference]:
        raise UserError("the reference router inputs come from a model with other MoE layers")
    out = [LayerLogitNoise(layer.index, layer.router_weight.detach().to("cpu", torch.float64, copy=True),
                           LogitPairs(layer.num_experts)) for layer in layers]

    def make(layer: MoELayer, rec: LayerLogitNoise, ref: LayerInputs):
        @torch.no_grad()
        def hook(module, args, output):
            z = router_logits(layer, args, output)
            real = state.real(z.shape[0], z.device)
            if real is not None:
                z = z[real]
            if rec.calls >= len(ref.logits):
                raise UserError("the chip run made more router calls than the reference run")
            rec.pairs.update(ref.logits[rec.calls], z)
            rec.calls += 1
        return hook

    try:
        handles += _mask_hooks(model, state)
        handles += [layer.router.register_forward_hook(make(layer, rec, ref))
                    for layer, rec, ref in zip(layers, out, reference)]
        yield out
    finally:
        for handle in handles:
            handle.remove()


def router_noise_report(reference: list[LayerInputs], noise: list[LayerLogitNoise]) -> list[dict]:
    """Per MoE layer: the inputs' anisotropy and mean cosine, the predicted systematic share (= anisotropy), the
    weight account (the chip's router ΔW on the clean inputs) and the measured account (paired logits), and
    ``router_own_share`` = weight-account noise / measured noise (mean squares: 1 when all the logit noise is
    the router's own, < 1 when noise also arrives through the input)."""
    rows = []
    for ref, chip in zip(reference, noise):
        if chip.calls != len(ref.logits):
            raise UserError(f"layer {ref.layer}: the chip run made {chip.calls} router calls, the reference "
                            f"{len(ref.logits)}: not the same tokens")
        weight = noise_account(weight_moments(ref.moments, ref.weight, chip.chip_weight, ref.bias))
        measured = noise_account(chip.pairs.moments())
        rows.append({"layer": ref.layer, "tokens": ref.moments.n, "anisotropy": ref.moments.anisotropy,
                     "mean_cosine": ref.moments.mean_cosine, "predicted_share": ref.moments.anisotropy,
                     "weight": weight, "measured": measured,
                     "router_own_share": weight["noise_ms"] / measured["noise_ms"] if measured["noise_ms"] > 0
                     else math.nan})
    return rows
