"""The Calibrator: a validated method config → fit on calibration tokens run through the chip-programmed model
→ a Plan. Order (our reading of the paper): replacement first, then the router correction fitted on the
replaced, programmed model."""

from __future__ import annotations

import statistics
from dataclasses import dataclass

import torch
from torch import nn

from romer.calibrate import recalibration as recal
from romer.calibrate import replacement as rep
from romer.calibrate.apply import apply
from romer.calibrate.config import MethodConfig
from romer.calibrate.data import calibration_windows, capture_logits, run_windows
from romer.calibrate.maxnn import digital_experts
from romer.calibrate.plan import Plan, Replacement, model_summary
from romer.calibrate.routing_rule import RouterFix
from romer.errors import UserError
from romer.models.view import moe_layers
from romer.noise.chip import Chip, tensor_generator
from romer.routing.recorder import RoutingRecord, record_routing
from romer.routing.stats import coefficient_of_variation


@dataclass
class Observation:
    """Routing of one model state over the calibration windows: the record, and (optionally) raw logits by layer."""

    record: RoutingRecord
    logits: dict[int, torch.Tensor] | None = None

    def token_scale(self, layer: int, p: float) -> float:
        """Mean over tokens of Q_p(|z_t|), the per-token p-th percentile of the absolute router logits."""
        return float(torch.quantile(self.logits[layer].abs(), p / 100, dim=-1).mean())

    def cv(self) -> list[float]:
        return [coefficient_of_variation(layer.frequency) for layer in self.record]


@torch.no_grad()
def observe(model: nn.Module, windows: torch.Tensor, batch_size: int, keep_logits: bool = False) -> Observation:
    """Record routing (and keep router logits) while the calibration windows run through ``model`` as it is."""
    if not keep_logits:
        with record_routing(model) as record:
            run_windows(model, windows, batch_size)
        return Observation(record)
    with record_routing(model) as record, capture_logits(model) as kept:
        run_windows(model, windows, batch_size)
    return Observation(record, {i: torch.cat(chunks) for i, chunks in kept.items()})


def observe_chip(model: nn.Module, chip: Chip, windows: torch.Tensor, batch_size: int) -> Observation:
    """Observation (with logits) of ``model`` programmed onto ``chip``, no calibration; the model is restored."""
    with apply(model, chip, Plan.none(chip)):
        return observe(model, windows, batch_size, keep_logits=True)


class Calibrator:
    """Fits one method's plan for a chip from calibration windows (``calibration_windows(tokenizer, data)``).

    ``clean`` (the clean model observed on the same windows, with logits) and ``noisy`` (the model programmed on
    the fitting chip, observed the same way: ``observe_chip``) can be passed in to share them across methods;
    so can ``replaced``, the observation (no logits) of the model running this method's replacement (or router
    copies) alone on the fitting chip, which its router correction is fitted on (ROMER order).
    """

    def __init__(self, method: MethodConfig):
        self.method = method

    def windows(self, tokenizer) -> torch.Tensor:
        return calibration_windows(tokenizer, self.method.calibration)

    def fit_chip(self, chip: Chip) -> Chip:
        """The chip the plan is fitted on: the scored chip, or another one (seed + fit_seed_offset: transfer),
        read at ``fit_time`` when the method sets one (else at the scored chip's time), with the ``fit_io`` periphery
        when the method sets one (else the chip's own)."""
        fitted = chip.with_seed(chip.seed + self.method.fit_seed_offset)
        if self.method.fit_io is not None:
            fitted = fitted.with_io(self.method.fit_io)
        t_fit = self.method.fit_time
        if t_fit is None:
            return fitted
        if t_fit > chip.preset.max_t_inference:
            raise UserError(f"fit_time {t_fit:g} s is past the {chip.preset.name} device data "
                            f"(up to {chip.preset.max_t_inference:g} s)")
        return fitted.with_time(t_fit)

    @torch.no_grad()
    def fit(self, model: nn.Module, windows: torch.Tensor, chip: Chip, clean: Observation | None = None,
            noisy: Observation | None = None, replaced: Observation | None = None) -> Plan:
        m = self.method
        fit_chip = self.fit_chip(chip)
        if m.replace is not None and m.replace.threshold is None:  # r known from the structure: refuse before observing
            for layer in moe_layers(model):
                r = rep.replacement_count(torch.zeros(layer.num_experts), layer.top_k, m.replace)
                rep.check_count(r, layer.num_experts, layer.top_k, m.replace.variant, layer.index)
        plan = Plan(method=m.model_dump(mode="json"), chip=fit_chip.to_dict(), model=model_summary(model))
        if m.copies is not None:
            plan.router_copies = m.copies.count
            if not m.observes:  # router copies alone are hardware only: nothing is observed (``windows`` may be None)
                return plan
        batch = m.calibration.batch_size
        clean = clean or observe(model, windows, batch, keep_logits=True)
        layers = moe_layers(model)
        fixes = {layer.index: RouterFix(layer.index) for layer in layers}
        noisy = noisy or observe_chip(model, fit_chip, windows, batch)
        stats = {"calibration_tokens": noisy.record.tokens, "cv_clean": clean.cv(), "cv_noisy": noisy.cv()}

        if m.replace is not None:
            source = noisy if m.replace.frequencies == "noisy" else clean
            for layer, observed in zip(layers, source.record):
                r = rep.replacement_count(observed.frequency, layer.top_k, m.replace)
                rep.check_count(r, layer.num_experts, layer.top_k, m.replace.variant, layer.index)
                generator = tensor_generator(fit_chip.seed, f"replace/random/{layer.index}")
                pairs = rep.choose_pairs(observed.frequency, r, m.replace.select, generator)
                plan.replacement.append(Replacement(layer.index, m.replace.variant, pairs))
                if m.replace.variant in rep.MASKING_VARIANTS:
                    fixes[layer.index].masked = [cold for cold, _ in pairs]
                elif m.replace.variant == "split":
                    fixes[layer.index].split = [(hot, cold) for cold, hot in pairs]
        if m.maxnn is not None:
            plan.digital_experts = ({layer.index: digital_experts(layer, m.maxnn.expert_share) for layer in layers}
                                    if m.maxnn.experts else {})
            plan.digital_attention = m.maxnn.attention
        plan.router = list(fixes.values())

        if m.recalibrate is not None:
            self._recalibrate(model, windows, fit_chip, plan, fixes, clean, noisy, replaced)
        if m.balance is not None:
            for layer in layers:
                fix = fixes[layer.index]
                fix.selection_bias = recal.fit_balance_bias(noisy.logits[layer.index], layer.top_k, m.balance,
                                                            fix.masked)
                fix.apply_to = "selection"
        plan.stats = {**stats, "cv_noisy_mean": statistics.fmean(stats["cv_noisy"]),
                      "cv_clean_mean": statistics.fmean(stats["cv_clean"])}
        return plan

    def _recalibrate(self, model, windows, fit_chip, plan, fixes, clean: Observation, noisy: Observation,
                     replaced: Observation | None = None) -> None:
        """Fit every layer's router correction on the replaced (or router-copied), programmed model (ROMER order);
        sequentially, each layer sees the earlier layers already corrected."""
        config, batch = self.method.recalibrate, self.method.calibration.batch_size
        all_layers = moe_layers(model)
        positions = {layer.index: position for position, layer in enumerate(all_layers)}
        layers = [l for l in all_layers if config.layers is None or l.index in config.layers]
        if not layers:
            raise UserError(f"recalibrate.layers {list(config.layers)} names no MoE layer of this model "
                            f"(MoE layers: {list(positions)})")
        if config.mode == "token":  # P3 scales every token to the clean reference: no noisy statistics needed
            for layer in layers:
                recal.fit_token(clean.token_scale(layer.index, config.p), config, fixes[layer.index])
            return
        if config.mode == "lstsq":  # paired clean logits; MethodConfig refuses it after a replacement or sequential
            for layer in layers:
                recal.fit_lstsq(noisy.logits[layer.index], clean.logits[layer.index], config, fixes[layer.index])
            return

        def fit_layer(layer, observed: Observation) -> None:
            position = positions[layer.index]
            recal.FITTERS[config.mode](observed.record.layers[position], clean.record.layers[position], config,
                                       fixes[layer.index])

        own_weights = bool(plan.replacement) or plan.router_copies > 1
        if not config.sequential:
            if own_weights and replaced is not None:
                noisy = replaced
            elif own_weights:
                with apply(model, fit_chip, plan):
                    noisy = observe(model, windows, batch)
            for layer in layers:
                fit_layer(layer, noisy)
            return
        for layer in layers:  # identity placeholders, so that every router is hooked and can be filled in place
            fixes[layer.index].scale, fixes[layer.index].offset = [1.0] * layer.num_experts, [0.0] * layer.num_experts
        with apply(model, fit_chip, plan):
            for layer in layers:
                fit_layer(layer, observe(model, windows, batch))
