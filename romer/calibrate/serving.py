"""Serve a text stream through a monitored model: score each step, then let the monitor refit (never before).

``serve_text(model, tokenizer, text, monitor)`` cuts the text into BOS-prefixed windows of ``window`` tokens
(as ``romer.eval.perplexity`` does), and runs them ``step`` windows at a time: one forward scores the step's
tokens (summed NLL) while the monitor's hooks sketch them, then ``monitor.end_window`` closes the step and may
refit. So the tokens of step w are scored by a correction fitted on steps < w only: nothing is scored on tokens
it was fitted on. Steps hold windows of one length only, so no padding ever reaches the monitor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from romer.calibrate.monitor import RoutingMonitor, WindowLog
from romer.eval.perplexity import ScoredWindow, _bos_id, _encode, _score, check_context, token_windows


@dataclass
class Served:
    """A served stream: its summed NLL (nats) over ``tokens`` scored tokens and the monitor's log."""

    nll_sum: float
    tokens: int
    log: list[WindowLog]

    @property
    def ppl(self) -> float:
        return math.exp(self.nll_sum / self.tokens) if self.tokens else math.nan

    def to_dict(self) -> dict:
        return {"ppl": self.ppl, "tokens": self.tokens, "nll_sum": self.nll_sum,
                "log": [entry.to_dict() for entry in self.log]}


def steps(ids: list[int], window: int, step: int, bos_id: int) -> list[list[ScoredWindow]]:
    """The stream's windows in steps of ``step`` windows; the last, shorter window in a step of its own."""
    windows = [ScoredWindow(w, w[1:], 0) for w in token_windows(ids, window, bos_id)]
    full = [w for w in windows if len(w.input_ids) == window]
    out = [full[i:i + step] for i in range(0, len(full), step)]
    return out + [[w] for w in windows if len(w.input_ids) != window]


def serve_text(model, tokenizer, text: str, monitor: RoutingMonitor, window: int = 512, step: int = 8,
               score=_score) -> Served:
    """Score ``text`` step by step through ``model`` with ``monitor`` installed (module docstring); ``score``
    (model, windows, pad_id, batch_size, progress, description) → (nll_sum, tokens) is the scoring function."""
    check_context(model, window)
    bos_id = _bos_id(tokenizer)
    pad_id = tokenizer.pad_token_id if getattr(tokenizer, "pad_token_id", None) is not None else bos_id
    nll_sum, tokens = 0.0, 0
    for batch in steps(_encode(tokenizer, text), window, step, bos_id):
        nll, count = score(model, batch, pad_id, len(batch), False, "serve")
        nll_sum, tokens = nll_sum + nll, tokens + count
        monitor.end_window(nll=nll, scored=count)
    return Served(nll_sum, tokens, list(monitor.log))
