"""Train a reference MoE model from a YAML config: real transformers class, per-layer load balancing.

transformers' built-in auxiliary loss pools the router logits of all layers, which balances experts across the
model but lets single layers collapse. Here each MoE layer gets its own Switch-style balancing loss
``E · Σ_e f_e · P_e`` (f_e: share of the layer's top-k slots given to expert e, P_e: mean router probability),
averaged over layers, plus OLMoE's router z-loss ``mean(logsumexp(z)²)``.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import yaml

from romer.data import load_text, load_tokenizer
from romer.models.view import moe_layers
from romer.progress import Progress


@dataclass(frozen=True)
class TrainingConfig:
    seed: int
    seq_len: int
    batch_size: int
    tokens: int
    lr: float
    betas: tuple[float, float]
    weight_decay: float
    warmup_steps: int
    grad_clip: float
    balance_loss_coef: float
    z_loss_coef: float
    eval_every: int
    eval_windows: int

    @property
    def steps(self) -> int:
        return math.ceil(self.tokens / (self.seq_len * self.batch_size))


@dataclass(frozen=True)
class ZooRecipe:
    model: dict = field(hash=False)
    training: TrainingConfig

    @classmethod
    def from_yaml(cls, path: str | Path) -> "ZooRecipe":
        raw = yaml.safe_load(Path(path).read_text())
        unknown = set(raw) - {"model", "training"}
        if unknown or "model" not in raw or "training" not in raw:
            raise ValueError(f"{path}: expected exactly the sections 'model' and 'training', got {sorted(raw)}")
        training = dict(raw["training"])
        training["betas"] = tuple(training["betas"])
        try:
            return cls(model=dict(raw["model"]), training=TrainingConfig(**training))
        except TypeError as exc:
            raise ValueError(f"{path}: bad training section: {exc}") from None


def build_model(model_config: dict, tokenizer, seed: int):
    """A freshly initialised model of the config's family; the init draws from a forked, seeded RNG."""
    from transformers import AutoConfig, AutoModelForCausalLM

    kwargs = dict(model_config)
    model_type = kwargs.pop("model_type")
    special = {k: tokenizer.eos_token_id for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    config = AutoConfig.for_model(model_type, **kwargs, **special)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoModelForCausalLM.from_config(config)


def window_batches(ids: torch.Tensor, seq_len: int, batch_size: int, bos_id: int, generator: torch.Generator):
    """Endless batches of [BOS] + (seq_len - 1) consecutive tokens: each epoch shuffles the non-overlapping
    chunks of the stream, starting at a random offset, so every token is seen once per epoch."""
    chunk = seq_len - 1
    while True:
        offset = int(torch.randint(0, chunk, (1,), generator=generator))
        n = (len(ids) - offset) // chunk
        chunks = ids[offset : offset + n * chunk].view(n, chunk)
        order = torch.randperm(n, generator=generator)
        for start in range(0, n - batch_size + 1, batch_size):
            body = chunks[order[start : start + batch_size]]
            yield torch.cat([torch.full((batch_size, 1), bos_id), body], dim=1)


def balance_loss(logits: torch.Tensor, topk_indices: torch.Tensor, num_experts: int) -> torch.Tensor:
    """Switch-style balancing loss of one layer: ``E · Σ_e f_e · P_e``.

    f_e = share of the layer's top-k slots taken by expert e (no gradient), P_e = mean softmax probability of
    e over tokens. Equals 1 for perfectly uniform routing and E when every token goes to one expert with p = 1.
    """
    probs = logits.float().softmax(dim=-1).reshape(-1, num_experts)
    share = torch.bincount(topk_indices.reshape(-1), minlength=num_experts).float() / topk_indices.numel()
    return num_experts * (share * probs.mean(dim=0)).sum()


def router_z_loss(logits: torch.Tensor) -> torch.Tensor:
    """OLMoE's router z-loss ``mean_t (log Σ_e exp z_te)²``: keeps router logits small."""
    return torch.logsumexp(logits.float(), dim=-1).pow(2).mean()


@contextmanager
def router_losses(model):
    """Collects per-layer balancing and z-losses from router forward hooks; hooks always removed."""
    layers = moe_layers(model)
    captured: list[tuple[torch.Tensor, torch.Tensor, int]] = []

    def hook(module, args, output):
        layer = by_router[module]
        captured.append((output[0], layer.topk_indices(output), layer.num_experts))

    if any(layer.experts.layout != "fused" for layer in layers):
        raise ValueError("training supports transformers-native MoE families (routers returning logits first)")
    by_router = {layer.router: layer for layer in layers}
    handles = [layer.router.register_forward_hook(hook) for layer in layers]

    def losses() -> tuple[torch.Tensor, torch.Tensor]:
        """(balancing loss, z-loss), each averaged over the MoE layers of the last forward pass."""
        balance = [balance_loss(logits, topk, n_experts) for logits, topk, n_experts in captured]
        z = [router_z_loss(logits) for logits, _, _ in captured]
        captured.clear()
        return torch.stack(balance).mean(), torch.stack(z).mean()

    try:
        yield losses
    finally:
        for h in handles:
            h.remove()


def _lr_at(step: int, cfg: TrainingConfig) -> float:
    """Linear warm-up, then cosine decay to 10 % of the peak."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def _lm_loss(model, batch: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Next-token cross-entropy (nats) of ``batch`` under bf16 autocast; logits reduced in fp32."""
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(input_ids=batch).logits.float()
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction=reduction
    )


@torch.no_grad()
def _validation_loss(model, windows: torch.Tensor, batch_size: int) -> float:
    model.eval()
    total = 0.0
    for start in range(0, len(windows), batch_size):
        total += _lm_loss(model, windows[start : start + batch_size], reduction="sum").item()
    model.train()
    return total / (windows.shape[0] * (windows.shape[1] - 1))


def train(recipe_path: str | Path, out_dir: str | Path, progress: bool = True) -> dict:
    """Train the model of ``recipe_path`` and write an HF folder (fp16 safetensors, tokenizer, recipe,
    training log) to ``out_dir`` atomically. Returns the training log."""
    recipe = ZooRecipe.from_yaml(recipe_path)
    cfg = recipe.training
    tokenizer = load_tokenizer()
    bos = tokenizer.eos_token_id
    generator = torch.Generator().manual_seed(cfg.seed)
    model = build_model(recipe.model, tokenizer, cfg.seed)
    model.train()

    encode = tokenizer.backend_tokenizer.encode
    train_ids = torch.tensor(encode(load_text("train"), add_special_tokens=False).ids)
    val_ids = torch.tensor(encode(load_text("validation"), add_special_tokens=False).ids)
    n_val = min(cfg.eval_windows, len(val_ids) // (cfg.seq_len - 1))
    val_windows = torch.cat(
        [torch.full((n_val, 1), bos), val_ids[: n_val * (cfg.seq_len - 1)].view(n_val, cfg.seq_len - 1)], dim=1
    )

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2 or "embed" in n]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=cfg.betas,
    )
    batches = window_batches(train_ids, cfg.seq_len, cfg.batch_size, bos, generator)
    log = {"recipe": {"model": recipe.model, "training": asdict(cfg)}, "train_tokens_available": len(train_ids),
           "steps": [], "validation": []}
    started = time.perf_counter()
    with (router_losses(model) as layer_losses,
          Progress(f"train {Path(recipe_path).parent.name}", cfg.steps, enabled=progress, min_interval_s=30.0) as bar):
        for step in range(cfg.steps):
            for group in optimizer.param_groups:
                group["lr"] = _lr_at(step, cfg)
            batch = next(batches)
            lm_loss = _lm_loss(model, batch)
            balance, z = layer_losses()
            loss = lm_loss + cfg.balance_loss_coef * balance + cfg.z_loss_coef * z
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            log["steps"].append({"step": step + 1, "tokens": (step + 1) * batch.numel(), "lm_loss": lm_loss.item(),
                                 "balance_loss": balance.item(), "z_loss": z.item(), "grad_norm": grad_norm.item(),
                                 "lr": group["lr"], "seconds": time.perf_counter() - started})
            bar.advance(label=f"loss {lm_loss.item():.3f}")
            if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
                val = _validation_loss(model, val_windows, cfg.batch_size)
                layer_losses()  # discard router outputs captured during validation
                log["validation"].append({"step": step + 1, "tokens": (step + 1) * batch.numel(), "loss": val,
                                          "ppl": math.exp(val)})
    log["train_seconds"] = time.perf_counter() - started
    log["train_tokens"] = cfg.steps * cfg.seq_len * cfg.batch_size
    _save(model, tokenizer, recipe_path, log, Path(out_dir))
    return log


def _save(model, tokenizer, recipe_path, log: dict, out_dir: Path) -> None:
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        model.to(torch.float16).save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        shutil.copyfile(recipe_path, tmp / "train.yaml")
        (tmp / "training_log.json").write_text(json.dumps(log, indent=1))
        _plot_loss(log, tmp / "loss_curve.png")
        tmp.chmod(0o755)
        for path in tmp.iterdir():
            path.chmod(0o644)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _plot_loss(log: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    steps = log["steps"]
    ax.plot([s["tokens"] / 1e6 for s in steps], [s["lm_loss"] for s in steps], lw=0.8, label="train LM loss")
    ax.plot([v["tokens"] / 1e6 for v in log["validation"]], [v["loss"] for v in log["validation"]], "o-",
            label="validation loss")
    ax.set_xlabel("training tokens (M)")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
