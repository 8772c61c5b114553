"""Score methods on one (model, chip) pair: the evaluator behind ``romer run``.

An ``Evaluator`` keeps what does not depend on the chip (the loaded model, the evaluation slice, the clean
model's PPL, routing capture and calibration observation) and what one chip shares across methods (its noisy
observation on the calibration windows, its noisy PPL), so every method of a group is scored on the same chip
and the same tokens without repeating work. Calling it yields one result per method as soon as it is done.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import Any

import torch

from romer.calibrate import Calibrator, MethodConfig, Plan, apply, observe, plan_cost
from romer.calibrate.calibrator import Observation, observe_chip
from romer.calibrate.config import CalibrationData
from romer.calibrate.data import calibration_windows
from romer.data import load_documents
from romer.eval import perplexity
from romer.eval.perplexity import PerplexityResult
from romer.models.loading import load_model
from romer.noise.chip import Chip
from romer.routing import RoutingRecord, capture_routing, oracle_perplexity, record_routing
from romer.routing.stats import coefficient_of_variation

DEFAULT_EVAL = {"split": "test", "max_tokens": 16384, "window": 512, "batch_size": 8}


EVAL_ORDER_SEED = 0


def evaluation_text(split: str) -> str:
    """The split's documents in a fixed shuffled order (seed 0), joined by blank lines: any prefix mixes the
    corpus's sources (the split files list all Austen chapters first), so a token-capped slice is representative."""
    documents = load_documents(split)
    order = torch.randperm(len(documents), generator=torch.Generator().manual_seed(EVAL_ORDER_SEED)).tolist()
    return "\n\n".join(documents[i].text for i in order)


def text_slice(tokenizer, text: str, max_tokens: int | None) -> str:
    """The longest prefix of ``text`` whose tokens are the first ``max_tokens`` tokens of the whole text
    (cut at a token boundary); the whole text when ``max_tokens`` is None."""
    if max_tokens is None:
        return text
    encoding = tokenizer.backend_tokenizer.encode(text, add_special_tokens=False)
    if len(encoding.ids) <= max_tokens:
        return text
    return text[: encoding.offsets[max_tokens - 1][1]]


def _cv(record: RoutingRecord) -> float:
    values = [coefficient_of_variation(layer.frequency) for layer in record]
    return sum(values) / len(values)


def _scored(result: PerplexityResult, record: RoutingRecord | None) -> dict:
    out = {"ppl": result.ppl, "word_ppl": result.word_ppl, "bits_per_byte": result.bits_per_byte,
           "tokens": result.tokens, "window": result.window}
    if record is not None:
        out["cv"] = _cv(record)
        out["frequency"] = [layer.frequency.tolist() for layer in record]
    return out


class Evaluator:
    """Callable ``(group, method_names) → iterator of per-method result dicts``; one instance per process."""

    def __init__(self, progress: bool = False):
        self.progress = progress
        self._models: dict[str, tuple[Any, Any]] = {}
        self._cache: dict[tuple, Any] = {}

    # --- cached pieces ------------------------------------------------------------------------------------

    def _memo(self, key: tuple, make):
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def model(self, name: str):
        if name not in self._models:
            model, tokenizer = load_model(name)
            self._models[name] = (model.eval(), tokenizer)
        return self._models[name]

    def eval_text(self, name: str, spec: dict) -> str:
        _, tokenizer = self.model(name)
        return self._memo(("text", name, spec["split"], spec.get("max_tokens")),
                          lambda: text_slice(tokenizer, evaluation_text(spec["split"]), spec.get("max_tokens")))

    def clean(self, name: str, spec: dict):
        """(captured clean routing with its PPL, clean routing record) on the evaluation text."""
        model, tokenizer = self.model(name)

        def make():
            with record_routing(model) as record:
                captured = capture_routing(model, tokenizer, self.eval_text(name, spec), spec["window"],
                                           spec["batch_size"], progress=self.progress)
            return captured, record
        return self._memo(("clean", name, tuple(sorted(spec.items()))), make)

    def windows(self, name: str, data: CalibrationData) -> torch.Tensor:
        _, tokenizer = self.model(name)
        return self._memo(("windows", name, data), lambda: calibration_windows(tokenizer, data))

    def clean_observation(self, name: str, data: CalibrationData) -> Observation:
        model, _ = self.model(name)
        return self._memo(("clean-obs", name, data),
                          lambda: observe(model, self.windows(name, data), data.batch_size, keep_logits=True))

    def noisy_observation(self, name: str, chip: Chip, data: CalibrationData) -> Observation:
        model, _ = self.model(name)
        return self._memo(("noisy-obs", name, chip, data),
                          lambda: observe_chip(model, chip, self.windows(name, data), data.batch_size))

    def score(self, name: str, chip: Chip, plan: Plan, spec: dict) -> dict:
        model, tokenizer = self.model(name)
        with apply(model, chip, plan), record_routing(model) as record:
            result = perplexity(model, tokenizer, self.eval_text(name, spec), window=spec["window"],
                                batch_size=spec["batch_size"], progress=self.progress)
        cost = plan_cost(model, chip, plan)
        return {**_scored(result, record), "digital_share": cost.digital_share,
                "extra_analog_share": cost.extra_analog_share}

    def noisy(self, name: str, chip: Chip, spec: dict) -> dict:
        return self._memo(("noisy", name, chip, tuple(sorted(spec.items()))),
                          lambda: self.score(name, chip, Plan.none(chip), spec))

    # --- one method ---------------------------------------------------------------------------------------

    def method(self, name: str, chip: Chip, method: MethodConfig, spec: dict) -> dict:
        model, tokenizer = self.model(name)
        if method.kind == "clean":
            captured, record = self.clean(name, spec)
            return {**_scored(captured.clean, record), "digital_share": 1.0, "extra_analog_share": 0.0}
        if method.kind == "noisy":
            return dict(self.noisy(name, chip, spec))
        if method.kind == "oracle":
            captured, record = self.clean(name, spec)
            with apply(model, chip, Plan.none(chip)):
                result = oracle_perplexity(model, tokenizer, self.eval_text(name, spec), captured,
                                           progress=self.progress)
            return {**_scored(result, record), "digital_share": 0.0, "extra_analog_share": 0.0}
        data = method.calibration
        calibrator = Calibrator(method)
        fit_chip = calibrator.fit_chip(chip)
        plan = calibrator.fit(model, self.windows(name, data), chip, clean=self.clean_observation(name, data),
                              noisy=self.noisy_observation(name, fit_chip, data))
        return {**self.score(name, chip, plan, spec), "plan": plan.to_dict()}

    def __call__(self, group, method_names: Iterable[str] | None = None) -> Iterator[dict]:
        """Yield ``{"method": name, "ppl", "word_ppl", "bits_per_byte", "tokens", "cv", "cv_before",
        "digital_share", "extra_analog_share", "plan", "seconds", "frequency"}`` per method of ``group``
        (those in ``method_names`` only, when given)."""
        spec = {**DEFAULT_EVAL, **(group.eval or {})}
        chip = Chip.from_dict(group.chip)
        wanted = None if method_names is None else set(method_names)
        for payload in group.methods:
            method = MethodConfig.model_validate(payload)
            if wanted is not None and method.name not in wanted:
                continue
            start = time.perf_counter()
            with torch.no_grad():
                row = self.method(group.model, chip, method, spec)
                row["cv_before"] = self.noisy(group.model, chip, spec).get("cv")
            row.setdefault("plan", None)
            yield {"method": method.name, **row, "seconds": time.perf_counter() - start}
