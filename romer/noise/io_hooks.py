"""Putting a chip's IO model (``romer.noise.io``) on every analog matmul of a model, and taking it off again.

For each analog weight of the chip's placement:

* an ``nn.Linear`` (attention projections, shared experts and their gate, dense MLPs, modulelist experts,
  lm_head): its ``forward`` is replaced by ``analog_matmul`` + the digital bias;
* a router that is not an ``nn.Linear``: its ``forward`` runs under a torch function mode that sends the router's
  ``F.linear`` (the call whose weight has the router weight's shape) through ``analog_matmul``;
* fused experts: their ``forward`` becomes romer's sorted experts kernel with a ``project`` that runs every
  expert's projection through the IO path, per expert and per tile (one grouped matmul per tile);
* embeddings are lookups, not matmuls: no IO.

Nothing else (attention scores, norms, activations, routing arithmetic) is touched. Output noise of tensor
``name`` at its n-th forward call comes from the generator keyed ``name#io{n}`` (seeded from the chip seed), so a
chip is reproducible call for call. ``IOHooks.remove()`` puts every original ``forward`` back.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from romer.models.experts import FUSED
from romer.models.sorted_experts import sorted_experts_forward
from romer.models.view import moe_layers
from romer.noise.io import IOConfig, analog_matmul, static_ranges, tile_bounds, tiled_analog_matmul, weight_scales
from romer.noise.placement import AnalogWeight

GeneratorFor = Callable[[str, torch.device], torch.Generator]  # (key, device) → a seeded generator


class TensorIO:
    """The IO state of one analog tensor: forward-call counter, static input ranges, cached weight scales."""

    def __init__(self, name: str, io: IOConfig, generator_for: GeneratorFor):
        self.name, self.io, self._generator_for = name, io, generator_for
        self.calls = 0
        self.ranges: list[float] | None = None
        self._scales: tuple[tuple, list[Tensor]] | None = None

    def generator(self, device: torch.device) -> torch.Generator | None:
        """The output-noise generator of this call (None when the IO model has no output noise)."""
        self.calls += 1
        return self._generator_for(f"{self.name}#io{self.calls - 1}", device) if self.io.out_noise else None

    def static_ranges(self, rows: Tensor) -> list[float] | None:
        """The static input range per tile, calibrated from the first call with rows (None for abs-max)."""
        if self.io.input_range != "static":
            return None
        if self.ranges is None and rows.shape[0]:
            self.ranges = static_ranges(rows, self.io)
        return self.ranges

    def scales(self, weight: Tensor) -> list[Tensor]:
        """``weight_scales`` of ``weight`` [..., out, in], recomputed only when the tensor changed in place."""
        key = (weight.data_ptr(), tuple(weight.shape), tuple(weight.stride()), weight._version)
        if self._scales is None or self._scales[0] != key:
            self._scales = (key, weight_scales(weight, self.io))
        return self._scales[1]

    def matmul(self, x: Tensor, weight: Tensor) -> Tensor:
        flat = x.reshape(-1, x.shape[-1])
        return analog_matmul(x, weight, self.io, self.generator(x.device), self.static_ranges(flat),
                             self.scales(weight))


class _RouterLinear(TorchFunctionMode):
    """Inside a router's forward: its ``F.linear`` (weight of the router weight's shape) through the IO path."""

    def __init__(self, state: TensorIO, shape: torch.Size):
        super().__init__()
        self.state, self.shape = state, shape

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear:
            x, weight = args[0], args[1] if len(args) > 1 else kwargs["weight"]
            bias = args[2] if len(args) > 2 else kwargs.get("bias")
            if weight.shape == self.shape:
                y = self.state.matmul(x, weight)
                return y if bias is None else y + bias
        return func(*args, **kwargs)


def _linear_forward(module: nn.Linear, state: TensorIO):
    def forward(x: Tensor) -> Tensor:
        y = state.matmul(x, module.weight)
        return y if module.bias is None else y + module.bias
    return forward


def _router_forward(router: nn.Module, state: TensorIO, shape: torch.Size):
    original = router.forward

    def forward(*args, **kwargs):
        with _RouterLinear(state, shape):
            return original(*args, **kwargs)
    return forward


def _grouped(x_hat: Tensor, weight_in_out: Tensor, offsets: Tensor) -> Tensor:
    """Rows sorted by expert through ``weight_in_out`` [E, in, out]: one grouped matmul on the CPU, else a loop."""
    x_hat = x_hat.to(weight_in_out.dtype)
    if x_hat.device.type == "cpu":
        return F.grouped_mm(x_hat, weight_in_out, offs=offsets)
    out, start = x_hat.new_empty(x_hat.shape[0], weight_in_out.shape[-1]), 0
    for e, stop in enumerate(offsets.tolist()):
        if stop > start:
            out[start:stop] = x_hat[start:stop] @ weight_in_out[e]
        start = stop
    return out


def _exact_rows(y: Tensor, rows: Tensor, w_out_in: Tensor, expert_of_row: Tensor, experts: frozenset[int]) -> None:
    """Rows routed to a digital expert get the exact product (their digital unit has no periphery), in place."""
    for e in sorted(experts):
        chosen = torch.nonzero(expert_of_row == e).squeeze(1)
        if chosen.numel():
            y.index_copy_(0, chosen, (rows.index_select(0, chosen) @ w_out_in[e].T).to(y.dtype))


def _experts_forward(module: nn.Module, states: dict[str, TensorIO], digital: dict[int, frozenset[int]]):
    num_experts = module.gate_up_proj.shape[0]

    def project(which: str, rows: Tensor, weight: Tensor, offsets: Tensor, expert_of_row: Tensor) -> Tensor:
        state = states[which]
        w_out_in = weight.detach().transpose(-2, -1) if module.is_transposed else weight.detach()
        scales = state.scales(w_out_in)
        bounds = tile_bounds(w_out_in.shape[-1], state.io.tile_rows)

        def matmul(t: int, x_hat: Tensor, subset: Tensor | None) -> Tensor:
            a, b = bounds[t]
            offs = offsets if subset is None else torch.cumsum(
                torch.bincount(expert_of_row.index_select(0, subset), minlength=num_experts), 0, dtype=torch.int32)
            return _grouped(x_hat, w_out_in[:, :, a:b].transpose(-2, -1), offs)

        def row_scales(t: int, subset: Tensor | None) -> Tensor:
            experts = expert_of_row if subset is None else expert_of_row.index_select(0, subset)
            return scales[t].index_select(0, experts)

        y = tiled_analog_matmul(rows, state.io, matmul, row_scales, state.generator(rows.device),
                                state.static_ranges(rows))
        if digital.get(id(module)):
            _exact_rows(y, rows.float(), w_out_in.float(), expert_of_row, digital[id(module)])
        return y.to(torch.result_type(rows, weight))

    def forward(hidden_states: Tensor, top_k_index: Tensor, top_k_weights: Tensor) -> Tensor:
        return sorted_experts_forward(module, hidden_states, top_k_index, top_k_weights, project=project)
    return forward


def _put_back(module: nn.Module, before) -> None:
    if before is None:
        module.__dict__.pop("forward", None)
    else:
        module.forward = before


class IOHooks:
    """The replaced forwards of one model; ``remove()`` restores the originals (idempotent)."""

    def __init__(self):
        self._saved: list[tuple[nn.Module, object]] = []
        self.states: dict[str, TensorIO] = {}
        self.digital_experts: dict[int, frozenset[int]] = {}  # id(fused experts module) → experts kept digital

    def replace(self, module: nn.Module, forward) -> None:
        self._saved.append((module, module.__dict__.get("forward")))
        module.forward = forward

    def keep_digital(self, linears: list[nn.Module], fused_experts: dict[nn.Module, list[int]]) -> None:
        """Take the periphery off parts a plan keeps digital (MaxNN): these ``nn.Linear`` modules run their own
        forward again, and rows routed to the listed experts of a fused experts module get the exact product."""
        chosen = {id(m) for m in linears}
        for module, before in self._saved:
            if id(module) in chosen:
                _put_back(module, before)
        self._saved = [(m, f) for m, f in self._saved if id(m) not in chosen]
        for module, experts in fused_experts.items():
            self.digital_experts[id(module)] = frozenset(experts)

    def remove(self) -> None:
        for module, before in reversed(self._saved):
            _put_back(module, before)
        self._saved.clear()
        self.digital_experts.clear()


def install_io(model: nn.Module, io: IOConfig, weights: list[AnalogWeight], generator_for: GeneratorFor) -> IOHooks:
    """Put ``io`` on every matmul of ``weights`` (the chip's analog weights of ``model``); see the module doc."""
    hooks = IOHooks()
    analog = {id(w.parameter): w for w in weights}
    linears = {id(m.weight): m for m in model.modules() if isinstance(m, nn.Linear)}
    done: set[int] = set()

    def state(name: str) -> TensorIO:
        return hooks.states.setdefault(name, TensorIO(name, io, generator_for))

    for layer in moe_layers(model):
        experts = layer.experts
        if experts.layout == FUSED and id(experts.module.gate_up_proj) in analog:
            prefix = analog[id(experts.module.gate_up_proj)].name.rsplit(".", 1)[0]
            states = {"gate_up": state(f"{prefix}.gate_up_proj"), "down": state(f"{prefix}.down_proj")}
            hooks.replace(experts.module, _experts_forward(experts.module, states, hooks.digital_experts))
            done |= {id(experts.module.gate_up_proj), id(experts.module.down_proj)}
        weight = layer.router_weight
        if id(weight) in analog and id(weight) not in linears:
            hooks.replace(layer.router, _router_forward(layer.router, state(analog[id(weight)].name), weight.shape))
            done.add(id(weight))
    for w in weights:
        module = linears.get(id(w.parameter))
        if module is not None and id(w.parameter) not in done:
            hooks.replace(module, _linear_forward(module, state(w.name)))
    return hooks
