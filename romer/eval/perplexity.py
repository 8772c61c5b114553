"""Perplexity of a causal LM over non-overlapping token windows, with lm-evaluation-harness word and byte normalisations.

A split is one string (documents joined by "\\n\\n"). Its tokens are cut into consecutive chunks of ``window - 1``
tokens; each chunk is prefixed by one BOS token, so every text token is scored exactly once, given only the
tokens before it in its own window. Word count and byte count follow lm-eval's ``wikitext`` task.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from romer.errors import UserError
from romer.progress import Progress


@dataclass(frozen=True)
class PerplexityResult:
    """Summed negative log-likelihood of a text and the counts it is normalised by."""

    window: int  # model input length, tokens, including the one BOS token
    tokens: int  # text tokens scored, each exactly once
    words: int  # lm-eval word count: len(re.split(r"\s+", text))
    bytes: int  # UTF-8 length of the text, bytes
    nll_sum: float  # total negative log-likelihood, nats

    @property
    def ppl(self) -> float:
        """Token perplexity, exp(nats / token)."""
        return math.exp(self.nll_sum / self.tokens)

    @property
    def word_ppl(self) -> float:
        """Word perplexity, exp(nats / word)."""
        return math.exp(self.nll_sum / self.words)

    @property
    def bits_per_byte(self) -> float:
        """Cross-entropy per UTF-8 byte, bits / byte."""
        return self.nll_sum / self.bytes / math.log(2)

    def to_dict(self) -> dict:
        return {**asdict(self), "ppl": self.ppl, "word_ppl": self.word_ppl, "bits_per_byte": self.bits_per_byte}


def token_windows(ids: list[int] | torch.Tensor, window: int, bos_id: int) -> list[torch.Tensor]:
    """Split text tokens into chunks of ``window - 1`` tokens, each returned as ``[bos_id] + chunk`` (int64)."""
    if window < 2:
        raise UserError(f"perplexity window must be at least 2 tokens (one BOS + one text token), got {window}")
    ids = torch.as_tensor(ids, dtype=torch.long).flatten()
    if ids.numel() == 0:
        raise UserError("cannot compute perplexity of an empty text: it has no tokens")
    bos = torch.tensor([bos_id], dtype=torch.long)
    return [torch.cat([bos, chunk]) for chunk in ids.split(window - 1)]


def _encode(tokenizer, text: str) -> list[int]:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:  # the fast path does not warn about texts longer than model_max_length
        return list(backend.encode(text, add_special_tokens=False).ids)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


@torch.no_grad()
def perplexity(
    model,
    tokenizer,
    text: str,
    window: int = 512,
    batch_size: int = 8,
    progress: bool = False,
    description: str = "perplexity",
) -> PerplexityResult:
    """Total NLL (nats) of ``text`` under ``model``, scored in non-overlapping BOS-prefixed windows of ``window`` tokens.

    The caller decides train/eval mode; gradients are never tracked. Logits are reduced in float32 (float64 if given).
    """
    if batch_size < 1:
        raise UserError(f"batch_size must be at least 1, got {batch_size}")
    bos_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if bos_id is None:
        raise UserError("tokenizer has neither a BOS nor an EOS token to start each window with")
    pad_id = tokenizer.pad_token_id if getattr(tokenizer, "pad_token_id", None) is not None else bos_id
    windows = token_windows(_encode(tokenizer, text), window, bos_id)
    device = next(model.parameters()).device

    nll_sum = 0.0
    tokens = 0
    with Progress(description, len(windows), unit="windows", enabled=progress, min_interval_s=10.0,
                  transient=True) as bar:
        for start in range(0, len(windows), batch_size):
            batch = windows[start : start + batch_size]
            length = max(len(w) for w in batch)
            input_ids = torch.full((len(batch), length), pad_id, dtype=torch.long)
            attention_mask = torch.zeros((len(batch), length), dtype=torch.long)
            for row, w in enumerate(batch):
                input_ids[row, : len(w)] = w
                attention_mask[row, : len(w)] = 1
            input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
            logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
            logits = logits[:, :-1]  # position j predicts token j + 1
            logp = F.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)
            target = input_ids[:, 1:]
            scored = attention_mask[:, 1:].bool()  # BOS is never a target; padding is masked out
            token_logp = logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)
            nll_sum -= token_logp[scored].double().sum().item()
            tokens += int(scored.sum().item())
            bar.advance(len(batch))

    return PerplexityResult(
        window=window,
        tokens=tokens,
        words=len(re.split(r"\s+", text)),
        bytes=len(text.encode("utf-8")),
        nll_sum=nll_sum,
    )


def unigram_perplexity(train_ids, test_ids, vocab_size: int) -> float:
    """Token perplexity of ``test_ids`` under an add-one smoothed unigram model of ``train_ids``.

    p(t) = (count_train(t) + 1) / (len(train_ids) + vocab_size); returns exp(-mean ln p(t)) over the test tokens.
    """
    train = torch.as_tensor(train_ids, dtype=torch.long).flatten()
    test = torch.as_tensor(test_ids, dtype=torch.long).flatten()
    if test.numel() == 0:
        raise UserError("cannot compute unigram perplexity of an empty test set")
    counts = torch.bincount(train, minlength=vocab_size).double()
    if counts.numel() > vocab_size or (test.numel() and int(test.max()) >= vocab_size):
        raise UserError(f"token ids must be below vocab_size={vocab_size}")
    log_p = torch.log((counts + 1.0) / (train.numel() + vocab_size))
    return math.exp(-log_p[test].mean().item())
