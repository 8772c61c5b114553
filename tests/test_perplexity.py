"""Perplexity over non-overlapping BOS-prefixed windows: golden numbers from tiny fake models and a char tokenizer."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from romer.eval import PerplexityResult, perplexity, token_windows, unigram_perplexity

BOS, PAD, V = 0, 9, 10
CHARS = "ab cdé\n"  # ids 1..7; 0 is BOS, 9 is PAD


class CharTokenizer:
    """One token per character; no backend_tokenizer, so perplexity() must call it."""

    bos_token_id = BOS
    eos_token_id = BOS
    pad_token_id = PAD

    def __call__(self, text, add_special_tokens=True):
        assert add_special_tokens is False
        return {"input_ids": [CHARS.index(c) + 1 for c in text]}


class UniformModel(nn.Module):
    """Logits of zero over V tokens: p = 1/V everywhere (float64, so golden values hold to 1e-9)."""

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask=None):
        return SimpleNamespace(logits=torch.zeros(*input_ids.shape, V, dtype=torch.float64) + 0 * self.dummy)


class BigramModel(nn.Module):
    """Next-token distribution depends only on the current input token: logits[j] = ln P[input_ids[j]]."""

    def __init__(self, table):
        super().__init__()
        self.log_p = nn.Parameter(torch.log(torch.tensor(table, dtype=torch.float64)))

    def forward(self, input_ids, attention_mask=None):
        return SimpleNamespace(logits=self.log_p[input_ids])


class CausalModel(nn.Module):
    """Random, context-dependent, strictly causal: logits at j from the running mean of embeddings 0..j.

    At positions where attention_mask is 0 it emits `pad_logit` everywhere (extreme or NaN) — they must never count.
    """

    def __init__(self, pad_logit=0.0, dtype=torch.float32):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.emb = nn.Parameter(torch.randn(V, 16, generator=g).to(dtype))
        self.out = nn.Parameter(torch.randn(16, V, generator=g).to(dtype))
        self.pad_logit = pad_logit

    def forward(self, input_ids, attention_mask=None):
        h = self.emb[input_ids].cumsum(1) / torch.arange(1, input_ids.shape[1] + 1).view(1, -1, 1)
        logits = h @ self.out * 3
        if attention_mask is not None:
            logits = logits.masked_fill(~attention_mask.bool().unsqueeze(-1), self.pad_logit)
        return SimpleNamespace(logits=logits)


def test_uniform_model_golden():
    # text "ab ab": 5 char tokens, re.split(r"\s+") -> ["ab", "ab"] = 2 words, 5 UTF-8 bytes.
    # nll_sum = 5 ln 10; ppl = 10; word_ppl = exp(5 ln10 / 2) = 10**2.5; bits/byte = 5 ln10 / 5 / ln2 = log2(10).
    r = perplexity(UniformModel(), CharTokenizer(), "ab ab", window=3)
    assert (r.window, r.tokens, r.words, r.bytes) == (3, 5, 2, 5)
    assert r.nll_sum == pytest.approx(5 * math.log(10), rel=1e-9)
    assert r.ppl == pytest.approx(10.0, rel=1e-9)
    assert r.word_ppl == pytest.approx(10**2.5, rel=1e-9)
    assert r.bits_per_byte == pytest.approx(math.log2(10), rel=1e-9)
    d = r.to_dict()
    assert set(d) == {"window", "tokens", "words", "bytes", "nll_sum", "ppl", "word_ppl", "bits_per_byte"}
    assert d["ppl"] == r.ppl and d["nll_sum"] == r.nll_sum


def test_uniform_model_multibyte_and_newlines():
    # "é a\n\nb": 6 chars = 6 tokens; 'é' is 2 bytes -> 7 bytes; split on \s+ -> ["é", "a", "b"] = 3 words.
    r = perplexity(UniformModel(), CharTokenizer(), "é a\n\nb", window=4, batch_size=2)
    assert (r.tokens, r.words, r.bytes) == (6, 3, 7)
    assert r.bits_per_byte == pytest.approx(6 * math.log(10) / 7 / math.log(2), rel=1e-9)
    assert r.word_ppl == pytest.approx(10**2, rel=1e-9)


def test_word_count_follows_lm_eval_regex_split():
    # lm-eval counts len(re.split(r"\s+", text)), so leading/trailing whitespace adds empty "words":
    # " ab\n" -> ["", "ab", ""] = 3 words (str.split() would give 1). 4 tokens, 4 bytes.
    r = perplexity(UniformModel(), CharTokenizer(), " ab\n", window=8)
    assert (r.tokens, r.words, r.bytes) == (4, 3, 4)
    assert r.word_ppl == pytest.approx(10 ** (4 / 3), rel=1e-9)


# Bigram table over ids (BOS=0, a=1, b=2, ' '=3); rows = current token, columns = next token.
TABLE = [[0.0] * V for _ in range(V)]
TABLE[BOS][:4] = [1 / 8, 1 / 2, 1 / 4, 1 / 8]  # p(a|BOS) = 1/2, p(b|BOS) = 1/4
TABLE[1][:4] = [1 / 4, 1 / 8, 1 / 2, 1 / 8]  # p(b|a) = 1/2
TABLE[2][:4] = [1 / 4, 1 / 4, 1 / 4, 1 / 4]  # p(a|b) = p(b|b) = 1/4
for row in TABLE:
    if not any(row):
        row[:] = [1 / V] * V
    row[:] = [p if p else 1e-12 for p in row]  # no ln 0; the 1e-12 mass is far below the test tolerance


def test_bigram_model_golden_with_window_boundary():
    # text "abbab", window=3 -> windows [BOS a b] [BOS b a] [BOS b] (the last one padded in the batch).
    # scored: p(a|BOS) p(b|a) | p(b|BOS) p(a|b) | p(b|BOS) = 1/2 * 1/2 * 1/4 * 1/4 * 1/4 = 2**-8
    # -> nll_sum = 8 ln 2, ppl = 2**(8/5).
    r = perplexity(BigramModel(TABLE), CharTokenizer(), "abbab", window=3, batch_size=8)
    assert r.tokens == 5
    assert r.nll_sum == pytest.approx(8 * math.log(2), rel=1e-6)
    assert r.ppl == pytest.approx(2 ** (8 / 5), rel=1e-6)
    # one window holding the whole text: p(a|BOS) p(b|a) p(b|b) p(a|b) p(b|a) = 1/2 1/2 1/4 1/4 1/2 = 2**-7
    r = perplexity(BigramModel(TABLE), CharTokenizer(), "abbab", window=6)
    assert r.nll_sum == pytest.approx(7 * math.log(2), rel=1e-6)


def test_token_windows_exact():
    windows = token_windows(list(range(1, 8)), window=3, bos_id=0)
    assert [w.tolist() for w in windows] == [[0, 1, 2], [0, 3, 4], [0, 5, 6], [0, 7]]
    assert all(w.dtype == torch.long for w in windows)
    assert [w.tolist() for w in token_windows(torch.tensor([5, 6]), window=2, bos_id=9)] == [[9, 5], [9, 6]]
    assert [w.tolist() for w in token_windows([5, 6], window=100, bos_id=9)] == [[9, 5, 6]]


@pytest.mark.parametrize("window", [1, 0, -3])
def test_token_windows_rejects_short_window(window):
    with pytest.raises(ValueError, match="window"):
        token_windows([1, 2, 3], window=window, bos_id=0)


def test_token_windows_rejects_empty_text():
    with pytest.raises(ValueError, match="empty"):
        token_windows([], window=4, bos_id=0)
    with pytest.raises(ValueError, match="empty"):
        perplexity(UniformModel(), CharTokenizer(), "", window=4)


@pytest.mark.parametrize("window", [2, 3, 4, 7, 12, 13, 50])
def test_every_token_scored_exactly_once(window):
    text = "ab cd ab\ncd a"  # 13 tokens
    r = perplexity(UniformModel(), CharTokenizer(), text, window=window, batch_size=2)
    assert r.tokens == len(text) == 13
    assert r.nll_sum == pytest.approx(13 * math.log(10), rel=1e-9)
    assert sum(len(w) - 1 for w in token_windows(list(range(1, 14)), window, 0)) == 13


def test_batch_size_invariance_with_short_last_window():
    text = "abcd abcd ab"  # 12 tokens; window 6 -> chunks of 5, 5, 2 text tokens (last window short)
    model = CausalModel()
    results = [perplexity(model, CharTokenizer(), text, window=6, batch_size=b) for b in (1, 2, 3, 8)]
    assert all(r.tokens == 12 for r in results)
    for r in results[1:]:
        assert r.nll_sum == pytest.approx(results[0].nll_sum, rel=1e-6)
    assert results[0].ppl > 1.0 and not math.isclose(results[0].ppl, V)  # a real, non-uniform model


@pytest.mark.parametrize("pad_logit", [1e4, -1e4, float("nan")])
def test_padding_never_scored(pad_logit):
    text = "abcd abcd ab"  # window 6 -> windows of 6, 6, 3 tokens; the last is padded when batched
    reference = perplexity(CausalModel(), CharTokenizer(), text, window=6, batch_size=1)
    padded = perplexity(CausalModel(pad_logit=pad_logit), CharTokenizer(), text, window=6, batch_size=3)
    assert padded.tokens == reference.tokens == 12
    assert padded.nll_sum == pytest.approx(reference.nll_sum, rel=1e-6)


def test_pads_with_pad_id_and_masks_with_zero():
    seen = {}

    class Spy(UniformModel):
        def forward(self, input_ids, attention_mask=None):
            seen["ids"], seen["mask"] = input_ids.tolist(), attention_mask.tolist()
            return super().forward(input_ids, attention_mask)

    perplexity(Spy(), CharTokenizer(), "abc", window=3, batch_size=2)
    assert seen["ids"] == [[BOS, 1, 2], [BOS, 4, PAD]]  # "c" is id 4
    assert seen["mask"] == [[1, 1, 1], [1, 1, 0]]


def test_bos_falls_back_to_eos_and_pad_to_bos():
    seen = {}

    class Spy(UniformModel):
        def forward(self, input_ids, attention_mask=None):
            seen["ids"] = input_ids.tolist()
            return super().forward(input_ids, attention_mask)

    tok = CharTokenizer()
    tok.bos_token_id, tok.eos_token_id, tok.pad_token_id = None, 8, None
    perplexity(Spy(), tok, "abc", window=3, batch_size=2)
    assert seen["ids"] == [[8, 1, 2], [8, 4, 8]]
    tok.eos_token_id = None
    with pytest.raises(ValueError, match="BOS"):
        perplexity(UniformModel(), tok, "abc", window=3)


def test_uses_backend_tokenizer_when_present():
    class Backend:
        def encode(self, text, add_special_tokens=True):
            assert add_special_tokens is False
            return SimpleNamespace(ids=[1, 2, 3, 1])

    class FastTokenizer(CharTokenizer):
        backend_tokenizer = Backend()

        def __call__(self, *args, **kwargs):
            raise AssertionError("should use backend_tokenizer")

    r = perplexity(UniformModel(), FastTokenizer(), "whatever text", window=3)
    assert r.tokens == 4 and r.words == 2 and r.bytes == 13


def test_float32_and_half_logits_are_reduced_in_float32():
    class Float32Uniform(UniformModel):
        def forward(self, input_ids, attention_mask=None):
            return SimpleNamespace(logits=torch.zeros(*input_ids.shape, V, dtype=self.dtype))

    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        model = Float32Uniform()
        model.dtype = dtype
        r = perplexity(model, CharTokenizer(), "ab ab", window=3)
        assert r.ppl == pytest.approx(10.0, rel=1e-6)


def test_float64_logits_and_progress_bar():
    text = "ab cd ab\ncd a"
    r64 = perplexity(CausalModel(dtype=torch.float64), CharTokenizer(), text, window=4, progress=True)
    r32 = perplexity(CausalModel(), CharTokenizer(), text, window=4)
    assert r64.nll_sum == pytest.approx(r32.nll_sum, rel=1e-5)


def test_no_grad():
    class GradCheck(UniformModel):
        def forward(self, input_ids, attention_mask=None):
            assert not torch.is_grad_enabled()
            return super().forward(input_ids, attention_mask)

    perplexity(GradCheck(), CharTokenizer(), "ab", window=2)


def test_result_properties_from_fields():
    r = PerplexityResult(window=4, tokens=4, words=2, bytes=8, nll_sum=4 * math.log(2))
    assert r.ppl == pytest.approx(2.0)
    assert r.word_ppl == pytest.approx(4.0)
    assert r.bits_per_byte == pytest.approx(0.5)


def test_unigram_perplexity_golden():
    # train [0,0,1], V=3 -> p0 = (2+1)/(3+3) = 1/2, p1 = (1+1)/6 = 1/3, p2 = 1/6
    # test [0,1] -> ppl = exp(-(ln 1/2 + ln 1/3) / 2) = sqrt(6)
    assert unigram_perplexity([0, 0, 1], [0, 1], vocab_size=3) == pytest.approx(math.sqrt(6), rel=1e-12)
    # unseen token 2: ppl = 6; empty train set -> uniform -> ppl = V
    assert unigram_perplexity([0, 0, 1], [2], vocab_size=3) == pytest.approx(6.0, rel=1e-12)
    assert unigram_perplexity(torch.tensor([], dtype=torch.long), [0, 1, 2], vocab_size=3) == pytest.approx(3.0)
    with pytest.raises(ValueError):
        unigram_perplexity([0, 1], [3], vocab_size=3)
