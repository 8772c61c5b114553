"""Oracle routing: the chip-programmed model run with the clean model's routing decisions and gate weights.

``capture_routing`` runs the clean model over the same BOS-prefixed windows ``romer.eval.perplexity`` scores and
stores, per forward call (batch) and MoE layer, what the router returned (gate weights exactly as returned,
top-k indices compactly), plus the batch's input ids. ``oracle_perplexity`` then runs the (noisy) model over
the same windows while a forward hook on every router **replaces** its returned weights and indices with the
captured clean ones; the noisy logits stay in their slot (transformers 5 routers return ``(logits, weights,
indices)``; the remote-code DeepSeek ``MoEGate`` returns ``(indices, weights, aux_loss)`` and its aux_loss stays).

Every supported family's MoE block hands the router's returned weights and indices straight to its experts
(olmoe, qwen2_moe, qwen3_moe, mixtral, deepseek_v2, deepseek_v3 in transformers 5.24; checked in their modeling
code). That is not taken on trust: during the oracle run a pre-hook on the experts module checks that the
indices (and weights) it receives are the injected ones (fused layout), or that each expert receives exactly
as many rows as the injected indices send it (ModuleList layout). A block that routes by anything else raises
``OracleRoutingError`` rather than giving a silently wrong number.

PPL(oracle) bounds what any routing-only repair can achieve; (PPL_noisy − PPL_oracle) / (PPL_noisy − PPL_clean)
is the share of the noise damage that routing causes (``routing_damage_share``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from romer.errors import UserError
from romer.eval.perplexity import PerplexityResult, perplexity
from romer.models.view import FUSED, MoELayer, moe_layers
from romer.routing.recorder import _topk_dtype


class OracleRoutingError(UserError):
    """Oracle routing cannot be applied: other windows than captured, or a block that ignores the router's output."""


@dataclass
class LayerCapture:
    """One router call: gate weights as returned (dtype and shape kept) and the indices in a compact dtype."""

    weights: torch.Tensor
    indices: torch.Tensor
    index_dtype: torch.dtype


@dataclass
class CapturedRouting:
    """The clean model's routing on every batch of a perplexity run: ``batches[b][l]`` for MoE layer slot l."""

    window: int
    batch_size: int
    layer_indices: list[int]
    batches: list[list[LayerCapture]] = field(default_factory=list)
    input_ids: list[torch.Tensor] = field(default_factory=list)  # per batch, int32 on CPU
    clean: PerplexityResult | None = None  # the clean model's perplexity from the same run

    def nbytes(self) -> int:
        return sum(c.weights.numel() * c.weights.element_size() + c.indices.numel() * c.indices.element_size()
                   for batch in self.batches for c in batch) + sum(i.numel() * 4 for i in self.input_ids)

    def topk(self, slot: int) -> torch.Tensor:
        """All captured indices of MoE layer ``slot`` (padding included), ``[rows, top_k]`` int64, batch order."""
        return torch.cat([b[slot].indices.reshape(-1, b[slot].indices.shape[-1]).long() for b in self.batches])


def _input_ids(args: tuple, kwargs: dict) -> torch.Tensor | None:
    ids = kwargs.get("input_ids", args[0] if args else None)
    return ids if isinstance(ids, torch.Tensor) else None


@torch.no_grad()
def capture_routing(model: nn.Module, tokenizer, text: str, window: int = 512, batch_size: int = 8,
                    progress: bool = False) -> CapturedRouting:
    """Run ``model`` (clean) over the perplexity windows of ``text`` and capture every router's weights and
    indices per batch; the run's perplexity is kept in ``.clean``. Memory: tokens × layers × top_k × (weight
    bytes + 1 or 2) — an evaluation split, not a calibration stream."""
    layers = moe_layers(model)
    captured = CapturedRouting(window=window, batch_size=batch_size, layer_indices=[l.index for l in layers])

    def start(module, args, kwargs):
        ids = _input_ids(args, kwargs)
        captured.input_ids.append(ids.detach().to("cpu", torch.int32) if ids is not None else torch.empty(0))
        captured.batches.append([None] * len(layers))

    def store(slot: int, layer: MoELayer):
        def hook(module, args, output):
            if not captured.batches or captured.batches[-1][slot] is not None:
                raise OracleRoutingError(f"router of layer {layer.index} ran outside one model forward call per batch")
            indices = output[layer.router_output.index("indices")]
            if int(indices.max()) >= layer.num_experts or int(indices.min()) < 0:
                raise OracleRoutingError(f"layer {layer.index}: router returned an index outside 0 … E − 1")
            captured.batches[-1][slot] = LayerCapture(
                weights=output[layer.router_output.index("weights")].detach().to("cpu", copy=True),
                indices=indices.detach().to("cpu", _topk_dtype(layer.num_experts)),
                index_dtype=indices.dtype)
        return hook

    handles = [model.register_forward_pre_hook(start, with_kwargs=True)]
    try:
        handles += [l.router.register_forward_hook(store(i, l)) for i, l in enumerate(layers)]
        captured.clean = perplexity(model, tokenizer, text, window=window, batch_size=batch_size, progress=progress,
                                    description="capture clean routing")
    finally:
        for h in handles:
            h.remove()
    missing = [(b, layers[s].index) for b, batch in enumerate(captured.batches) for s, c in enumerate(batch) if c is None]
    if missing:
        raise OracleRoutingError(f"routers did not run in every batch (batch, layer): {missing[:5]}")
    return captured


class _Replayer:
    """Forward hooks that replace the routers' outputs (of ``only``'s decoder layers; None: every MoE layer) with
    the captured ones, and check that the experts use them."""

    def __init__(self, model: nn.Module, captured: CapturedRouting, only: tuple[int, ...] | None = None):
        self.model, self.captured = model, captured
        self.layers = moe_layers(model)
        if [l.index for l in self.layers] != captured.layer_indices:
            raise OracleRoutingError(f"captured MoE layers {captured.layer_indices} but the model has "
                                     f"{[l.index for l in self.layers]}")
        unknown = set(only or ()) - {l.index for l in self.layers}
        if unknown:
            raise OracleRoutingError(f"oracle layers {sorted(unknown)} are not MoE layers of this model "
                                     f"(MoE layers: {[l.index for l in self.layers]})")
        self.slots = [s for s, l in enumerate(self.layers) if only is None or l.index in only]
        self.batch = -1
        self.injected: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(self.layers)
        self.rows: list[torch.Tensor | None] = [None] * len(self.layers)  # modulelist: rows each expert received
        self.checked = [0] * len(self.layers)

    def hooks(self) -> list:
        handles = [self.model.register_forward_pre_hook(self.start, with_kwargs=True)]
        for slot in self.slots:
            layer = self.layers[slot]
            handles.append(layer.router.register_forward_hook(self.replace(slot, layer)))
            if layer.experts.layout == FUSED:
                handles.append(layer.experts.module.register_forward_pre_hook(self.check_fused(slot, layer),
                                                                              with_kwargs=True))
            else:
                for e, expert in enumerate(layer.experts.module):
                    handles.append(expert.register_forward_pre_hook(self.count_rows(slot, e)))
                handles.append(layer.block.register_forward_hook(self.check_rows(slot, layer)))
        return handles

    def start(self, module, args, kwargs):
        self.batch += 1
        if self.batch >= len(self.captured.batches):
            raise OracleRoutingError(f"more forward calls than the {len(self.captured.batches)} captured batches: "
                                     "not the same text, window or batch size")
        ids, want = _input_ids(args, kwargs), self.captured.input_ids[self.batch]
        if ids is not None and want.numel() and not torch.equal(ids.detach().to("cpu", torch.int32), want):
            raise OracleRoutingError(f"batch {self.batch} has other input ids than the captured run: "
                                     "not the same text, tokenizer, window or batch size")
        self.injected = [None] * len(self.layers)

    def replace(self, slot: int, layer: MoELayer):
        iw, ii = layer.router_output.index("weights"), layer.router_output.index("indices")

        def hook(module, args, output):
            if self.batch < 0:
                raise OracleRoutingError("router ran outside a model forward call")
            cap = self.captured.batches[self.batch][slot]
            noisy_indices = output[ii]
            if tuple(noisy_indices.shape) != tuple(cap.indices.shape):
                raise OracleRoutingError(f"layer {layer.index}, batch {self.batch}: router returned indices of shape "
                                         f"{tuple(noisy_indices.shape)}, captured {tuple(cap.indices.shape)}")
            weights = cap.weights.to(output[iw].device)
            indices = cap.indices.to(noisy_indices.device, cap.index_dtype)
            self.injected[slot] = (weights, indices)
            if self.rows[slot] is not None:
                self.rows[slot].zero_()
            out = list(output)
            out[iw], out[ii] = weights, indices
            return tuple(out)
        return hook

    def _unused(self, layer: MoELayer, what: str):
        family = getattr(getattr(self.model, "config", None), "model_type", None)
        return OracleRoutingError(
            f"{family} layer {layer.index} ({type(layer.block).__name__}): the experts did not receive the "
            f"router's returned {what}; this block recomputes routing, so oracle routing cannot replace it")

    def check_fused(self, slot: int, layer: MoELayer):
        def hook(module, args, kwargs):
            injected = self.injected[slot]
            if injected is None:
                raise self._unused(layer, "output (the router did not run before the experts)")
            index = kwargs.get("top_k_index", args[1] if len(args) > 1 else None)
            weights = kwargs.get("top_k_weights", args[2] if len(args) > 2 else None)
            if index is None or not torch.equal(index.reshape(-1).long(), injected[1].reshape(-1).long()):
                raise self._unused(layer, "indices")
            if weights is None or not torch.allclose(weights.reshape(-1).float(), injected[0].reshape(-1).float(),
                                                     rtol=1e-2, atol=1e-6):
                raise self._unused(layer, "gate weights")
            self.checked[slot] += 1
        return hook

    def count_rows(self, slot: int, e: int):
        def hook(module, args):
            if self.rows[slot] is None:
                self.rows[slot] = torch.zeros(self.layers[slot].num_experts, dtype=torch.int64)
            x = args[0]
            self.rows[slot][e] += x.reshape(-1, x.shape[-1]).shape[0]
        return hook

    def check_rows(self, slot: int, layer: MoELayer):
        def hook(module, args, output):
            injected = self.injected[slot]
            if injected is None:
                raise self._unused(layer, "output (the router did not run)")
            want = torch.bincount(injected[1].reshape(-1).long().cpu(), minlength=layer.num_experts)
            got = self.rows[slot] if self.rows[slot] is not None else torch.zeros_like(want)
            if not torch.equal(got, want):
                raise self._unused(layer, "indices (rows per expert differ from the injected top-k)")
            self.rows[slot] = torch.zeros_like(want)
            self.checked[slot] += 1
        return hook


@torch.no_grad()
def oracle_perplexity(model: nn.Module, tokenizer, text: str, captured: CapturedRouting, window: int | None = None,
                      batch_size: int | None = None, progress: bool = False,
                      layers: tuple[int, ...] | None = None) -> PerplexityResult:
    """Perplexity of ``model`` (e.g. chip-programmed) on ``text`` with every router's weights and indices replaced
    by the clean ones in ``captured`` (``layers``: only those decoder layers' routers; the others route as the
    model does). ``window`` and ``batch_size`` default to (and must equal) the capture's."""
    window = captured.window if window is None else window
    batch_size = captured.batch_size if batch_size is None else batch_size
    if (window, batch_size) != (captured.window, captured.batch_size):
        raise OracleRoutingError(f"captured with window {captured.window}, batch size {captured.batch_size}; "
                                 f"asked for {window}, {batch_size}")
    replayer = _Replayer(model, captured, layers)
    handles = []
    try:
        handles = replayer.hooks()
        result = perplexity(model, tokenizer, text, window=window, batch_size=batch_size, progress=progress,
                            description="oracle routing")
    finally:
        for h in handles:
            h.remove()
    if replayer.batch + 1 != len(captured.batches):
        raise OracleRoutingError(f"the oracle run had {replayer.batch + 1} batches, the capture "
                                 f"{len(captured.batches)}: not the same text, window or batch size")
    unchecked = [replayer.layers[s].index for s in replayer.slots if replayer.checked[s] != len(captured.batches)]
    if unchecked:
        raise OracleRoutingError(f"layers {unchecked}: the experts did not run once per batch with the injected "
                                 "routing; cannot confirm oracle routing")
    return result


def routing_damage_share(clean_ppl: float, noisy_ppl: float, oracle_ppl: float) -> float:
    """(PPL_noisy − PPL_oracle) / (PPL_noisy − PPL_clean): the share of the noise damage that routing causes
    (NaN when noise did no damage)."""
    gap = noisy_ppl - clean_ppl
    return (noisy_ppl - oracle_ppl) / gap if gap != 0 else math.nan


@dataclass(frozen=True)
class OracleResult:
    """Clean, noisy and oracle-routing perplexity of one chip on one text."""

    clean: PerplexityResult
    noisy: PerplexityResult
    oracle: PerplexityResult

    @property
    def routing_share(self) -> float:
        return routing_damage_share(self.clean.ppl, self.noisy.ppl, self.oracle.ppl)

    def to_dict(self) -> dict:
        share = self.routing_share
        return {"clean_ppl": self.clean.ppl, "noisy_ppl": self.noisy.ppl, "oracle_ppl": self.oracle.ppl,
                "routing_share": None if math.isnan(share) else share, "tokens": self.clean.tokens,
                "window": self.clean.window}


def oracle_routing(model: nn.Module, tokenizer, text: str, chip, window: int = 512, batch_size: int = 8,
                   captured: CapturedRouting | None = None, progress: bool = False) -> OracleResult:
    """Clean PPL (captured routing), then ``model`` programmed on ``chip``: its noisy PPL and its oracle-routing
    PPL; the model is restored afterwards. Pass ``captured`` to reuse one clean capture across chips."""
    from romer.noise.chip import program

    if captured is None:
        captured = capture_routing(model, tokenizer, text, window, batch_size, progress=progress)
    with program(model, chip):
        noisy = perplexity(model, tokenizer, text, window=captured.window, batch_size=captured.batch_size,
                           progress=progress, description="noisy")
        oracle = oracle_perplexity(model, tokenizer, text, captured, progress=progress)
    return OracleResult(clean=captured.clean, noisy=noisy, oracle=oracle)
