"""The IO model's cost (docs/io.md): how often the router's ADC alone changes a token's top-k, and the perplexity
cost of the IO periphery alone and on top of PCM, per model and placement."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from romer.eval import token_windows
from romer.eval.spec import EvalSpec
from romer.models import load_model
from romer.models.view import moe_layers
from romer.noise.chip import Chip, program
from romer.noise.io import AIHWKIT_DEFAULT, get_io, weight_scales
from romer.studies.noisy import noisy_perplexity

IO_STUDY_SPEC = EvalSpec(split="validation", max_tokens=4096)
ADC_BITS = (4, 5, 6, 7, 8, 9, 10, 12)


def adc_only(bits: int):
    """aihwkit-default's ADC (bound ±12, iterative bound management) with ``bits`` bits, nothing else: no DAC,
    no output noise."""
    return dataclasses.replace(AIHWKIT_DEFAULT, name=f"adc{bits}", dac_bits=0, out_noise=0.0, adc_bits=bits)


@torch.no_grad()
def _router_outputs(model: nn.Module, batches: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per MoE layer, the top-k indices [tokens, k] and the raw logits [tokens, E] of every router call."""
    layers = moe_layers(model)
    indices: list[list[torch.Tensor]] = [[] for _ in layers]
    logits: list[list[torch.Tensor]] = [[] for _ in layers]
    handles = []
    for i, layer in enumerate(layers):
        def hook(module, args, output, i=i, layer=layer):
            indices[i].append(layer.topk_indices(output).sort(-1).values)
            logits[i].append(output[layer.router_output.index("logits")].reshape(-1, layer.num_experts).float())
        handles.append(layer.router.register_forward_hook(hook))
    try:
        for batch in batches:
            model(input_ids=batch)
    finally:
        for handle in handles:
            handle.remove()
    return [torch.cat(x) for x in indices], [torch.cat(x) for x in logits]


def router_tie_rate(name: str, bits: tuple[int, ...] = ADC_BITS, spec: EvalSpec = IO_STUDY_SPEC,
                    batch_size: int = 8) -> dict:
    """Routers analog (nothing else), weights exact, and an ADC of ``bits`` bits on the router logits (plus the
    full aihwkit-default periphery for reference): the share of (token, layer) pairs whose top-k set differs from
    the clean model's, and the share whose k-th and (k+1)-th logits read exactly equal (a tie at the cut)."""
    model, tokenizer = load_model(name)
    ids = tokenizer.backend_tokenizer.encode(spec.text(tokenizer), add_special_tokens=False).ids
    windows = torch.stack([w for w in token_windows(ids, spec.window, tokenizer.bos_token_id) if len(w) == spec.window])
    batches = list(windows.split(batch_size))
    clean, _ = _router_outputs(model, batches)
    k = clean[0].shape[-1]
    rows = []
    for io in [*map(adc_only, bits), AIHWKIT_DEFAULT]:
        chip = Chip.from_options("gaussian", placement="router", io=io, eta=0.0)
        with program(model, chip):
            chosen, logits = _router_outputs(model, batches)
        changed = torch.cat([(a != b).any(-1) for a, b in zip(chosen, clean)]).float().mean().item()
        tied = torch.cat([_tied_at_cut(x, k) for x in logits]).float().mean().item()
        rows.append({"io": io.name, "adc_bits": io.adc_bits, "adc_step": io.output_step, "topk_changed": changed,
                     "tied_at_cut": tied})
    return {"model": name, "text": spec.label, "tokens": int(windows.numel()), "top_k": k, "rows": rows}


def _tied_at_cut(logits: torch.Tensor, k: int) -> torch.Tensor:
    top = logits.topk(k + 1, dim=-1).values
    return top[:, k - 1] == top[:, k]


def io_cost(name: str, ios: tuple[str, ...] = ("aihwkit-default", "hwa-standard"),
            placements: tuple[str, ...] = ("moe", "all"), pcm_scale: float = 1.0, chips: int = 3,
            spec: EvalSpec = IO_STUDY_SPEC) -> dict:
    """Validation PPL of ``name``: clean; per placement, PCM alone (×``pcm_scale``, t = 1 day), and per IO preset
    the IO alone (weights exact) and IO + PCM; the same chip seeds 0 … chips−1 everywhere."""
    model, tokenizer = load_model(name)
    text = spec.text(tokenizer)
    clean = spec.perplexity(model, tokenizer, text).ppl

    def ppl(chip: Chip) -> dict:
        r = noisy_perplexity(model, tokenizer, text, chip, chips, window=spec.window)
        return {"ppl_mean": r["ppl_mean"], "ppl_std": r["ppl_std"], "ppl_per_chip": r["ppl_per_chip"]}

    pcm = {"prog_noise_scale": pcm_scale, "read_noise_scale": pcm_scale}
    out = {}
    for placement in placements:
        cells = {"pcm": ppl(Chip.from_options("pcm", placement=placement, **pcm))}
        for io in map(get_io, ios):
            cells[f"io {io.name}"] = ppl(Chip.from_options("gaussian", placement=placement, io=io, eta=0.0))
            cells[f"pcm + io {io.name}"] = ppl(Chip.from_options("pcm", placement=placement, io=io, **pcm))
        out[placement] = cells
    return {"model": name, "text": spec.label, "chips": chips, "pcm_scale": pcm_scale, "clean_ppl": clean,
            "placements": out}


def bound_variants() -> dict[str, object]:
    """hwa-standard and two variants that take the ADC's bound out of play: iterative bound management (a clipped
    token runs again with halved inputs) and a ±100 bound with an 11-bit ADC (about hwa-standard's step, 0.098
    against 0.079 array units)."""
    hwa = get_io("hwa-standard")
    return {"hwa-standard": hwa,
            "hwa-standard, iterative bound management": dataclasses.replace(
                hwa, name="hwa-iterative", bound_management="iterative"),
            "hwa-standard, ±100 bound, 11-bit ADC": dataclasses.replace(
                hwa, name="hwa-bound-100", out_bound=100.0, adc_bits=11)}


def io_bound(name: str, placements: tuple[str, ...] = ("router", "experts"), pcm_scales: tuple[float, ...] = (0.0, 10.0),
             chips: int = 2, spec: EvalSpec = IO_STUDY_SPEC) -> dict:
    """Where hwa-standard's cost comes from and why it shrinks on noisy weights: per placement (the routers or the
    routed experts analog) and weights (exact: scale 0, a gaussian η = 0 chip; else PCM × scale at t = 1 day), the
    per-chip PPL with ideal IO and with each of :func:`bound_variants`, chip seeds 0 … chips−1."""
    model, tokenizer = load_model(name)
    text = spec.text(tokenizer)
    ios = {"ideal": get_io("ideal"), **bound_variants()}

    def chip(scale: float, placement: str, io) -> Chip:
        if not scale:
            return Chip.from_options("gaussian", placement=placement, io=io, eta=0.0)
        return Chip.from_options("pcm", placement=placement, io=io, prog_noise_scale=scale, read_noise_scale=scale,
                                 t_inference=86400.0)

    out = []
    for scale in pcm_scales:
        for placement in placements:
            cell = {"pcm_scale": scale, "placement": placement,
                    "ppl_per_chip": {label: noisy_perplexity(model, tokenizer, text, chip(scale, placement, io), chips,
                                                             window=spec.window)["ppl_per_chip"]
                                     for label, io in ios.items()}}
            if scale:
                cell["column_scale_ratio"] = column_scale_ratio(model, chip(scale, placement, ios["hwa-standard"]))
            out.append(cell)
    return {"model": name, "text": spec.label, "chips": chips, "clean_ppl": spec.perplexity(model, tokenizer, text).ppl,
            "cells": out}


@torch.no_grad()
def column_scale_ratio(model: nn.Module, chip: Chip) -> float:
    """The median over the chip's analog weight columns of s_read / s_exact: the weight scale the IO path maps onto
    the array (``weight_scales``: per column or tile abs-max) of the read-back weights over that of the exact ones.
    Above 1, the same input gives smaller outputs in array units, so fewer reach the ADC's bound."""
    weights = chip.analog_weights(model)

    def scales() -> torch.Tensor:
        return torch.cat([s.flatten() for w in weights for s in weight_scales(w.parameter.detach(), chip.io)])

    exact = scales()
    with program(model, chip):
        read = scales()
    return float((read / exact.clamp_min(1e-12)).median())
