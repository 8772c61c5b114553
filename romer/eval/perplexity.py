"""Perplexity of a causal LM over non-overlapping token windows, with lm-evaluation-harness word and byte normalisations.

A split is one string (documents joined by "\\n\\n"). Its tokens are cut into consecutive chunks of ``window - 1``
tokens; each chunk is prefixed by one BOS token, so every text token is scored exactly once, given only the
tokens before it in its own window. Word count and byte count follow lm-eval's ``wikitext`` task.

:func:`document_perplexity` is lm-eval's document-level ``loglikelihood_rolling`` instead: every document on its
own, from BOS, in rolling windows; its ``word_ppl`` equals lm-eval's ``word_perplexity``. On the same text the
two differ in three ways: here every window restarts from BOS with no earlier text, there only a document's
first window does (a later one is conditioned on the previous window's last token, the final partial one on up
to ``max_length`` earlier tokens); there each document restarts from BOS; and there a window scores
``max_length`` tokens, here ``window - 1``.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass

import torch

from romer.devices import release_free_memory
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


@dataclass(frozen=True)
class ScoredWindow:
    """One model input and the tokens it is scored on: the logit at position ``first + i`` predicts ``targets[i]``."""

    input_ids: torch.Tensor  # int64 [n], fed to the model as one row
    targets: torch.Tensor  # int64 [m], m ≤ n - first
    first: int


def check_context(model, window: int) -> None:
    """Refuse a window longer than the model's context (``config.max_position_embeddings``), where it has one."""
    context = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if isinstance(context, int) and window > context:
        raise UserError(f"window of {window} tokens is longer than the model's context of {context} tokens")


def _bos_id(tokenizer) -> int:
    bos_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if bos_id is None:
        raise UserError("tokenizer has neither a BOS nor an EOS token to start each window with")
    return bos_id


@torch.no_grad()
def _score(model, windows: list[ScoredWindow], pad_id: int, batch_size: int, progress: bool,
           description: str) -> tuple[float, int]:
    """Summed NLL (nats) and count of every window's targets, batches right-padded with ``pad_id``."""
    if batch_size < 1:
        raise UserError(f"batch_size must be at least 1, got {batch_size}")
    device = next(model.parameters()).device
    nll_sum = 0.0
    tokens = 0
    bar = None
    if progress:
        from rich.progress import Progress

        bar = Progress(transient=True)
        bar.start()
        task = bar.add_task(description, total=len(windows))
    try:
        for start in range(0, len(windows), batch_size):
            batch = windows[start : start + batch_size]
            length = max(len(w.input_ids) for w in batch)
            input_ids = torch.full((len(batch), length), pad_id, dtype=torch.long)
            attention_mask = torch.zeros((len(batch), length), dtype=torch.long)
            target = torch.full((len(batch), length), pad_id, dtype=torch.long)
            scored = torch.zeros((len(batch), length), dtype=torch.bool)
            for row, w in enumerate(batch):
                input_ids[row, : len(w.input_ids)] = w.input_ids
                attention_mask[row, : len(w.input_ids)] = 1
                target[row, w.first : w.first + len(w.targets)] = w.targets
                scored[row, w.first : w.first + len(w.targets)] = True
            logits = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits
            logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
            # −log p(target) = logsumexp(z) − z_target: one pass over the logits, no [batch, seq, vocab] copy
            token_nll = torch.logsumexp(logits, dim=-1) - logits.gather(-1, target.to(device).unsqueeze(-1)).squeeze(-1)
            nll_sum += token_nll[scored.to(device)].double().sum().item()  # padding is never a target
            tokens += int(scored.sum().item())
            if bar is not None:
                bar.advance(task, len(batch))
    finally:
        if bar is not None:
            bar.stop()
        release_free_memory()  # the logits' and activations' buffers, kept by the C allocator otherwise
    return nll_sum, tokens


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

    This is GPTQ-style token perplexity (one string, fixed windows, no context carried across a window boundary),
    except that each window starts with BOS. The caller decides train/eval mode; gradients are never tracked.
    Logits are reduced in float32 (float64 if given).
    """
    check_context(model, window)
    bos_id = _bos_id(tokenizer)
    pad_id = tokenizer.pad_token_id if getattr(tokenizer, "pad_token_id", None) is not None else bos_id
    windows = [ScoredWindow(w, w[1:], 0) for w in token_windows(_encode(tokenizer, text), window, bos_id)]
    nll_sum, tokens = _score(model, windows, pad_id, batch_size, progress, description)
    return PerplexityResult(
        window=window,
        tokens=tokens,
        words=len(re.split(r"\s+", text)),
        bytes=len(text.encode("utf-8")),
        nll_sum=nll_sum,
    )


def rolling_windows(ids: list[int], max_length: int, prefix_id: int) -> list[ScoredWindow]:
    """lm-eval's rolling windows (``get_rolling_token_windows`` with context_len=1, then ``make_disjoint_window``).

    The first window is ``[prefix] + ids[:L-1]`` scored on ``ids[:L]``; each next one predicts the following
    ``L`` tokens (fewer at the end) from the ``L`` tokens just before each, i.e. a full window conditions on the
    single last token of the previous one, and the last, partial window on as much earlier text as fits in ``L``.
    """
    if max_length < 1:
        raise UserError(f"max_length must be at least 1 token, got {max_length}")
    ids = torch.as_tensor(ids, dtype=torch.long).flatten()
    if ids.numel() == 0:
        return []
    first = min(max_length, ids.numel())
    windows = [ScoredWindow(torch.cat([torch.tensor([prefix_id]), ids[: first - 1]]), ids[:first], 0)]
    predicted = first
    while predicted < ids.numel():
        count = min(ids.numel() - predicted, max_length)
        end = predicted + count
        inputs = ids[end - max_length - 1 : end - 1]
        windows.append(ScoredWindow(inputs, ids[end - count : end], len(inputs) - count))
        predicted = end
    return windows


def document_perplexity(
    model,
    tokenizer,
    documents: list[str],
    max_length: int = 1024,
    batch_size: int = 8,
    progress: bool = False,
    description: str = "perplexity",
) -> PerplexityResult:
    """Total NLL (nats) of each document scored on its own in lm-eval's rolling windows (``loglikelihood_rolling``).

    Matches lm-evaluation-harness 0.4.13 (``HFLM(max_length=max_length)``): each document is encoded with the
    tokenizer's default special tokens (``tokenizer.encode(doc)``), starts from the BOS (else EOS) token, and is
    scored in :func:`rolling_windows`. Words and bytes are summed per document (lm-eval's ``count_words``:
    ``len(re.split(r"\\s+", doc))``), so ``word_ppl`` is lm-eval's ``word_perplexity`` of these documents.
    ``window`` of the result holds ``max_length``.
    """
    if not documents:
        raise UserError("cannot compute perplexity of no documents")
    check_context(model, max_length)
    bos_id = _bos_id(tokenizer)
    pad_id = tokenizer.pad_token_id if getattr(tokenizer, "pad_token_id", None) is not None else bos_id
    windows = [w for doc in documents for w in rolling_windows(tokenizer.encode(doc), max_length, bos_id)]
    if not windows:
        raise UserError("cannot compute perplexity of empty documents: they have no tokens")
    nll_sum, tokens = _score(model, windows, pad_id, batch_size, progress, description)
    return PerplexityResult(
        window=max_length,
        tokens=tokens,
        words=sum(len(re.split(r"\s+", doc)) for doc in documents),
        bytes=sum(len(doc.encode("utf-8")) for doc in documents),
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
