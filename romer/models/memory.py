"""How much memory a model folder will need, from its config.json alone (the model is built on the meta device).

Estimates (bytes; b = bytes per element of the chosen dtype, B = batch, T = window, H = hidden, V = vocab,
k = top-k, I = expert width, A = attention heads, E = experts, L = MoE layers):

- model: Σ parameter elements × b (tied weights once; buffers are small and ignored).
- programming: two float32 copies of the largest analog matrix (the matrix being programmed and its read-back)
  + 12 float32 chunk buffers (``romer.noise.mapping``: 2^18 elements on the CPU, the whole matrix on CUDA)
  + the draw stream's prefetched blocks (4 × 1 MiB).
- evaluation forward (no grad, one decoder layer's activations alive at a time): B·T·(12·H + 3·k·I + A·T)·b
  (hidden states and attention projections, the routed experts' gate/up/down activations of the k chosen
  experts per token, one layer's attention scores), + logits B·T·V in the dtype + B·T·V float32 for the
  log-softmax of scoring.
- calibration: the evaluation forward + the router logits kept for ROMER's fit: 2 observations (clean and
  noisy) × min(tokens, 16384) × E × L × 4.
- runtime: 0.6 GiB on the CPU (Python, torch, tokenizer) and 0.5 GiB of CUDA context per GPU.

The peak of a command is the model + the largest of its stages (they run one after another). These are
estimates, checked in tests against a measured peak of a small model; real peaks vary with the attention
implementation and allocator.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from romer.devices import available_ram_bytes, cuda_memory, dtype_name, parse_dtype
from romer.errors import UserError

GIB = 2**30
CPU_RUNTIME = int(0.6 * GIB)
CUDA_CONTEXT = int(0.5 * GIB)
CHUNK_BUFFERS = 12
CPU_CHUNK_ELEMENTS = 1 << 18
PREFETCH_BYTES = 4 * (1 << 20)
KEPT_LOGIT_TOKENS = 16384


@dataclass
class MemoryPlan:
    """Parameters and the bytes each stage needs (see the module docstring for the formulas)."""

    model_type: str
    dtype: torch.dtype
    window: int
    batch_size: int
    params: int
    active_params: int
    analog_params: int
    placement: str
    model_bytes: int
    largest_matrix: int  # elements of the largest analog matrix
    stages: dict[str, int] = field(default_factory=dict)  # stage → bytes on top of the model

    @property
    def peak(self) -> int:
        """The model + the largest stage (bytes), without the runtime."""
        return self.model_bytes + max(self.stages.values())

    def rows(self) -> list[tuple[str, str]]:
        share = self.analog_params / self.params if self.params else 0.0
        rows = [("parameters", f"{self.params / 1e9:.3f}B total, {self.active_params / 1e9:.3f}B active per token, "
                               f"{self.analog_params / 1e9:.3f}B analog ({share:.1%}, placement {self.placement})"),
                ("model", f"{gib(self.model_bytes)} in {dtype_name(self.dtype)}")]
        rows += [(f"{stage} (+ model)", f"{gib(self.model_bytes + extra)} (+{gib(extra)})")
                 for stage, extra in self.stages.items()]
        rows.append(("peak", gib(self.peak)))
        return rows


def gib(nbytes: float) -> str:
    return f"{nbytes / GIB:.2f} GiB"


def _meta_model(folder: Path, dtype: torch.dtype) -> nn.Module:
    from transformers import AutoConfig, AutoModelForCausalLM

    config_path = folder / "config.json"
    if not config_path.is_file():
        raise UserError(f"{folder}: no config.json, not a Hugging Face model folder")
    try:
        config = AutoConfig.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config, dtype=dtype)
    except (ValueError, KeyError, OSError) as exc:
        model_type = json.loads(config_path.read_text()).get("model_type")
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{folder}: cannot build model_type {model_type!r} from config.json ({first})") from None


def plan_memory(folder: str | Path, dtype: str | torch.dtype = "float32", window: int = 512, batch_size: int = 8,
                placement: str = "moe", calibration_windows: int = 64, device: str = "cpu") -> MemoryPlan:
    """The memory plan of the model in ``folder`` for weights on ``device`` (cpu or cuda…: sets the programming
    chunk; see the module docstring); nothing is loaded."""
    from romer.models.view import moe_layers
    from romer.noise.placement import NAMED_PLACEMENTS, analog_weights, parse_placement

    dtype = parse_dtype(dtype)
    folder = Path(folder)
    model = _meta_model(folder, dtype)
    config = model.config
    params = sum(p.numel() for p in model.parameters())
    layers = moe_layers(model)
    routed = [sum(p.numel() for p in layer.experts.parameters_by_name().values()) for layer in layers]
    active = params - sum(n * (1 - layer.top_k / layer.num_experts) for n, layer in zip(routed, layers))
    groups = parse_placement(placement)
    analog = analog_weights(model, groups, strict=placement not in NAMED_PLACEMENTS)
    analog_params = sum(w.parameter.numel() for w in analog)
    largest = max(w.parameter.shape[-2] * w.parameter.shape[-1] if w.parameter.ndim > 1 else w.parameter.numel()
                  for w in analog)
    b = torch.finfo(dtype).bits // 8
    hidden, vocab = config.hidden_size, config.vocab_size
    heads = getattr(config, "num_attention_heads", 1)
    top_k = max(layer.top_k for layer in layers)
    width = max(layer.experts.weights(0)["down"].shape[-1] for layer in layers)
    experts = max(layer.num_experts for layer in layers)
    tokens = batch_size * window
    forward = tokens * (12 * hidden + 3 * top_k * width + heads * window) * b + tokens * vocab * (b + 4)
    chunk = CPU_CHUNK_ELEMENTS if str(device).startswith("cpu") else largest
    programming = 2 * largest * 4 + CHUNK_BUFFERS * min(largest, chunk) * 4 + PREFETCH_BYTES
    kept = 2 * min(calibration_windows * window, KEPT_LOGIT_TOKENS) * experts * len(layers) * 4
    stages = {"programming": programming, f"evaluation (batch {batch_size} × {window})": forward,
              "calibration (ROMER)": forward + kept}
    return MemoryPlan(getattr(config, "model_type", "?"), dtype, window, batch_size, params, int(active),
                      analog_params, placement, params * b, largest, stages)


def fit_rows(plan: MemoryPlan, devices: list[str] | None = None) -> list[tuple[str, str, str, bool]]:
    """``(device, needed, free, fits)`` for the CPU and each visible CUDA device (or only ``devices``)."""
    rows = []
    need_cpu = plan.peak + CPU_RUNTIME
    if devices is None or "cpu" in devices:
        free = available_ram_bytes()
        rows.append(("cpu (RAM)", gib(need_cpu), gib(free), need_cpu <= free))
    for name, free, total in cuda_memory():
        if devices is None or name in devices:
            need = plan.peak + CUDA_CONTEXT
            rows.append((f"{name} ({gib(total)})", gib(need), gib(free), need <= free))
    return rows


def check_fits(folder: str | Path, device: str, dtype: str | torch.dtype = "float32", window: int = 512,
               batch_size: int = 8, placement: str = "moe") -> MemoryPlan:
    """The plan; UserError naming the numbers when the model cannot fit ``device`` (``cpu`` or ``cuda:N``)."""
    plan = plan_memory(folder, dtype, window, batch_size, placement, device=device)
    rows = fit_rows(plan, ["cpu" if device.startswith("cpu") else device])
    short = [r for r in rows if not r[3]]
    if short:
        stages = "; ".join(f"{k} {v}" for k, v in plan.rows()[1:])
        where = "; ".join(f"{d} needs ≈ {need}, has {free} free" for d, need, free, _ in short)
        raise UserError(f"{folder} does not fit: {where} ({stages}); see `romer plan-memory --model {folder}`; "
                        f"try --dtype bfloat16, a smaller --batch-size or another --device")
    return plan
