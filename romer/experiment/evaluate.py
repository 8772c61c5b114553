"""Score methods on one (model, chip) pair: the evaluator behind ``romer run``. Each piece of work is done once.

Per model (kept by the ``Evaluator`` across groups): the loaded model, the evaluation slice, the clean model's
PPL with its captured routing (the clean rows of every chip repeat this one result: clean does not depend on
the chip), the calibration windows and the clean model's observation on them.

Per (model, chip) (``romer.experiment.states``): the chip is programmed once; that programmed state serves every
method that only adds routing stages (noisy, oracle routing, recalibration, bias balancing) or keeps experts
digital (MaxNN: those experts' matrices are swapped in and out); the noisy observation of the calibration windows
is taken on it and shared by every method fitted on this chip. Each distinct replacement (replica copies need
their own draws) is programmed once and shared by the methods that use it: ``replacement`` and ROMER's
replacement part are the same state, and ROMER's router correction is fitted on the observation taken there.
Router copies (kind ``copies``) are programmed the same way, once per copy count.

Plans that are the same on this placement (``states.plan_key``: e.g. ``maxnn-12.5% experts`` and
``maxnn-12.5%`` when attention is not analog, ``maxnn attention`` and ``noisy``) are scored once; the later row
carries the same numbers and ``same_as``, the method it repeats. Every row carries ``stages``: the seconds of
load / clean / program / calibrate / evaluate it caused (shared work counted where it was first needed).
Evaluation runs under ``torch.autocast`` when the eval spec names a ``dtype`` other than float32.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterable, Iterator
from typing import Any

import torch

from romer.calibrate import Calibrator, MethodConfig, Plan, observe, plan_cost
from romer.calibrate.calibrator import Observation, observe_chip
from romer.calibrate.config import CalibrationData
from romer.calibrate.data import calibration_windows
from romer.eval import perplexity
from romer.eval.perplexity import PerplexityResult
from romer.eval.spec import EvalSpec
from romer.experiment import states
from romer.experiment.stages import StageClock
from romer.devices import parse_device
from romer.models.loading import load_model
from romer.noise.chip import Chip
from romer.noise.snr import snr_db, snr_ratio
from romer.routing import RoutingRecord, capture_routing, oracle_perplexity, record_routing
from romer.routing.stats import coefficient_of_variation

DEFAULT_EVAL = {"split": "test", "max_tokens": 16384, "window": 512, "batch_size": 8, "dtype": "float32"}


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


def _deferred(method: MethodConfig) -> bool:
    """A method whose router correction is fitted on its own weight state (the replaced chip, ROMER order; or
    the chip with averaged router copies): its fit waits for that state, where the observation it needs is
    taken once."""
    r = method.recalibrate
    return ((method.replace is not None or method.copies is not None) and r is not None and not r.sequential
            and r.mode != "token" and not method.fits_elsewhere)


def _weights_part(method: MethodConfig) -> MethodConfig:
    """The weight part of a deferred method: its replacement, or its router copies."""
    if method.replace is not None:
        return MethodConfig(name=f"{method.name} (replacement)", kind="replace", replace=method.replace,
                            calibration=method.calibration)
    return MethodConfig(name=f"{method.name} (copies)", kind="copies", copies=method.copies,
                        calibration=method.calibration)


class Evaluator:
    """Callable ``(group, method_names) → iterator of per-method result dicts``; one instance per process."""

    def __init__(self, progress: bool = False):
        self.progress = progress
        self.clock = StageClock()
        self._models: dict[tuple, tuple[Any, Any]] = {}
        self.loading = ("cpu", "float32")  # (device, weights dtype) of the group being scored
        self._cache: dict[tuple, Any] = {}

    # --- per model ----------------------------------------------------------------------------------------

    def _memo(self, key: tuple, make):
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def model(self, name: str):
        """The model on the current group's device and weight dtype (``eval.device``, ``eval.weights_dtype``)."""
        key = (name, *self.loading)
        if key not in self._models:
            with self.clock("load"):
                model, tokenizer = load_model(name, device=self.loading[0], dtype=self.loading[1])
                self._models[key] = (model.eval(), tokenizer)
        return self._models[key]

    def evaluation(self, spec: dict) -> EvalSpec:
        """The validated ``EvalSpec`` of a group's eval settings, built once per distinct settings."""
        return self._memo(("spec", json.dumps(spec, sort_keys=True)), lambda: EvalSpec.from_dict(spec))

    def eval_text(self, name: str, spec: dict) -> str:
        """The evaluation text of ``spec`` (``romer.eval.spec.EvalSpec.text``) for this model's tokenizer, once."""
        _, tokenizer = self.model(name)
        evaluation = self.evaluation(spec)
        return self._memo(("text", name, evaluation.dataset, evaluation.data_path, evaluation.split,
                           evaluation.resolved_order, evaluation.max_tokens), lambda: evaluation.text(tokenizer))

    def tasks(self, model, tokenizer, spec: dict) -> dict:
        """``{task: {acc, acc_norm, acc_stderr, …, samples}}`` of the model as it is now, or {} without tasks."""
        evaluation = self.evaluation(spec)
        if not evaluation.tasks:
            return {}
        with self.clock("tasks"):
            scores = evaluation.task_scores(model, tokenizer)
        return {task: score.row() for task, score in scores.items()}

    def precision(self, spec: dict):
        """The evaluation's numeric context: autocast to ``spec["dtype"]`` unless that is float32."""
        return self.evaluation(spec).precision(parse_device(spec.get("device", "cpu")).type)

    def clean(self, name: str, spec: dict):
        """(captured clean routing with its PPL, clean routing record) on the evaluation text."""
        model, tokenizer = self.model(name)

        def make():
            with self.clock("clean"), self.precision(spec), record_routing(model) as record:
                captured = capture_routing(model, tokenizer, self.eval_text(name, spec), spec["window"],
                                           spec["batch_size"], progress=self.progress)
            with self.precision(spec):
                tasks = self.tasks(model, tokenizer, spec)
            return captured, record, tasks
        return self._memo(("clean", name, json.dumps(spec, sort_keys=True)), make)

    def windows(self, name: str, data: CalibrationData) -> torch.Tensor:
        _, tokenizer = self.model(name)
        return self._memo(("windows", name, data), lambda: calibration_windows(tokenizer, data))

    def clean_observation(self, name: str, data: CalibrationData) -> Observation:
        model, _ = self.model(name)

        def make():
            with self.clock("calibrate"):
                return observe(model, self.windows(name, data), data.batch_size, keep_logits=True)
        return self._memo(("clean-obs", name, data), make)

    # --- one group ----------------------------------------------------------------------------------------

    def __call__(self, group, method_names: Iterable[str] | None = None) -> Iterator[dict]:
        """Yield ``{"method": name, "ppl", "word_ppl", "bits_per_byte", "tokens", "cv", "cv_before",
        "digital_share", "extra_analog_share", "plan", "seconds", "stages", "frequency", "snr_db"}`` per method of
        ``group`` (those in ``method_names`` only, when given), each as soon as it is done."""
        spec = {**DEFAULT_EVAL, **(group.eval or {})}
        self.loading = (spec.get("device", "cpu"), spec.get("weights_dtype", "float32"))
        wanted = None if method_names is None else set(method_names)
        methods = [m for m in (MethodConfig.model_validate(p) for p in group.methods)
                   if wanted is None or m.name in wanted]
        with torch.no_grad():
            yield from _GroupRun(self, group.model, Chip.from_dict(group.chip), spec).run(methods)


class _GroupRun:
    """The work of one (model, chip) group, in an order that sets each weight state up once."""

    def __init__(self, ev: Evaluator, name: str, chip: Chip, spec: dict):
        self.ev, self.name, self.chip, self.spec = ev, name, chip, spec
        self.started = time.perf_counter()
        self.clock = ev.clock
        self.model, self.tokenizer = ev.model(name)
        self.scores: dict[str, tuple[str, dict]] = {}  # plan key → (first method, scored)
        self.base: states.BaseState | None = None
        self.noisy_obs: dict[CalibrationData, Observation] = {}  # the scored chip's, by calibration data
        self._snr: dict | None = None  # the chip's SNRs (``snr()``), once per group

    def row(self, method: MethodConfig, row: dict) -> dict:
        now = time.perf_counter()
        out = {"method": method.name, **row, "plan": row.get("plan"), "seconds": now - self.started,
               "stages": self.clock.take()}
        if method.scores != "clean" and self.base is not None:
            if self._snr is None:  # every fit observes the chip before the first row: the same for every row
                self._snr = self.snr()
            out["snr_db"] = self._snr
        self.started = now
        return out

    # --- states -------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def on_base(self) -> Iterator[states.BaseState]:
        """The model as programmed on the chip for the block (programmed once, entered again by a copy)."""
        with self.clock("program"):
            if self.base is None:
                self.base = states.BaseState(self.model, self.chip)
            self.base.enter()
        try:
            yield self.base
        finally:
            with self.clock("program"):
                self.base.leave()

    def noisy_observation(self, method: MethodConfig) -> Observation:
        """The fitting chip's observation of the calibration windows: on the base state for the scored chip,
        else (chip transfer) programmed for it alone."""
        data, fit_chip = method.calibration, Calibrator(method).fit_chip(self.chip)
        windows = self.ev.windows(self.name, data)
        if fit_chip != self.chip:
            with self.clock("calibrate"):
                return self.ev._memo(("noisy-obs", self.name, fit_chip, data),
                                     lambda: observe_chip(self.model, fit_chip, windows, data.batch_size))
        if data not in self.noisy_obs:
            with self.on_base(), self.clock("calibrate"):
                self.noisy_obs[data] = observe(self.model, windows, data.batch_size, keep_logits=True)
        return self.noisy_obs[data]

    def fit(self, method: MethodConfig, replaced: Observation | None = None) -> Plan:
        if not method.observes:
            return Calibrator(method).fit(self.model, None, self.chip)
        data = method.calibration
        clean = self.ev.clean_observation(self.name, data)
        noisy = self.noisy_observation(method)
        with self.clock("calibrate"):
            return Calibrator(method).fit(self.model, self.ev.windows(self.name, data), self.chip, clean=clean,
                                          noisy=noisy, replaced=replaced)

    # --- scoring ------------------------------------------------------------------------------------------

    def score(self, method: MethodConfig, plan: Plan) -> dict:
        """Perplexity and routing of the plan's routing on the weight state entered now (once per plan key)."""
        key = states.plan_key(plan, self.chip)
        if key not in self.scores:
            with self.clock("evaluate"), states.routing(self.model, plan), self.ev.precision(self.spec):
                with record_routing(self.model) as record:  # the routing of the scored tokens only, not the tasks'
                    result = perplexity(self.model, self.tokenizer, self.ev.eval_text(self.name, self.spec),
                                        window=self.spec["window"], batch_size=self.spec["batch_size"],
                                        progress=self.ev.progress)
                tasks = self.ev.tasks(self.model, self.tokenizer, self.spec)
            self.scores[key] = (method.name, {**_scored(result, record), **({"tasks": tasks} if tasks else {})})
        first, scored = self.scores[key]
        cost = plan_cost(self.model, self.chip, plan)
        out = {**scored, "digital_share": cost.digital_share, "extra_analog_share": cost.extra_analog_share}
        if first != method.name:
            out["same_as"] = first
        return out

    def snr(self) -> dict:
        """The chip's weight SNR per placement group and, where a fit observed the calibration windows on it, the
        router logits' SNR ‖z_clean‖ / ‖z_chip − z_clean‖ pooled over layers and tokens ("router_logits"), dB."""
        out = dict(self.base.snr_db)
        data, noisy = next(iter(self.noisy_obs.items()), (None, None))
        clean = None if data is None else self.ev.clean_observation(self.name, data)
        if noisy is not None and noisy.logits and clean.logits:
            signal = sum(float(clean.logits[i].double().square().sum()) for i in clean.logits)
            noise = sum(float((noisy.logits[i].double() - clean.logits[i].double()).square().sum())
                        for i in clean.logits)
            out["router_logits"] = snr_db(snr_ratio(signal, noise))
        return out

    def noisy_cv(self) -> float | None:
        return self.scores[states.plan_key(Plan.none(self.chip), self.chip)][1].get("cv")

    def runs_on_base(self, plan: Plan) -> bool:
        """Whether the plan runs on the base state: no replica or router copies, no analog attention kept digital."""
        return not states.needs_own_programming(plan, self.chip) and not states.effective_digital(plan, self.chip)[1]

    def run(self, methods: list[MethodConfig]) -> Iterator[dict]:
        if any(m.scores in ("clean", "oracle") for m in methods):
            self.ev.clean(self.name, self.spec)  # on the clean model, before any programming
        # fits run on the clean model (MaxNN reads clean weights; sequential fits program the chip themselves)
        fitted = {m.name: self.fit(m) for m in methods if m.needs_fit and not _deferred(m)}
        parts = {m.name: self.fit(_weights_part(m)) for m in methods if _deferred(m)}
        noisy = next((m for m in methods if m.scores == "chip"), MethodConfig(name="noisy", kind="noisy"))
        with self.on_base() as base:
            self.score(noisy, Plan.none(self.chip))  # first: every row reports its routing CV as cv_before
            cv_before = self.noisy_cv()
            for m in methods:
                if m.scores == "chip":
                    yield self.row(m, {**self.score(m, Plan.none(self.chip)), "cv_before": cv_before})
                elif m.scores == "oracle":
                    yield self.row(m, {**self.oracle(), "cv_before": cv_before})
                elif m.name in fitted and self.runs_on_base(fitted[m.name]):
                    with base.digital(fitted[m.name]):
                        scored = self.score(m, fitted[m.name])
                    yield self.row(m, {**scored, "plan": fitted[m.name].to_dict(), "cv_before": cv_before})
        for m, plan, row in self.replica_rows(methods, fitted, parts):
            yield self.row(m, {**row, "plan": plan.to_dict(), "cv_before": cv_before})
        for m in methods:
            if m.scores == "clean":
                captured, record, tasks = self.ev.clean(self.name, self.spec)
                yield self.row(m, {**_scored(captured.clean, record), **({"tasks": tasks} if tasks else {}),
                                   "digital_share": 1.0,
                                   "extra_analog_share": 0.0, "cv_before": cv_before})

    def oracle(self) -> dict:
        """Oracle routing replays the clean routing of the evaluation tokens: it has no zero-shot scores."""
        captured, record, _ = self.ev.clean(self.name, self.spec)
        with self.clock("evaluate"), self.ev.precision(self.spec):
            result = oracle_perplexity(self.model, self.tokenizer, self.ev.eval_text(self.name, self.spec),
                                       captured, progress=self.ev.progress)
        return {**_scored(result, record), "digital_share": 0.0, "extra_analog_share": 0.0}

    def replica_rows(self, methods, fitted: dict[str, Plan], parts: dict[str, Plan]) -> Iterator[tuple]:
        """(method, plan, scored) for every method on its own programmed state (replicas, router copies, or analog
        attention kept digital), one weight state at a time, each programmed once."""
        plans = {m.name: fitted.get(m.name, parts.get(m.name)) for m in methods
                 if m.name in parts or (m.name in fitted and not self.runs_on_base(fitted[m.name]))}
        for key in dict.fromkeys(states.weights_key(p, self.chip) for p in plans.values()):
            group = [m for m in methods if m.name in plans and states.weights_key(plans[m.name], self.chip) == key]
            with self.clock("program"):
                applied = states.replica_weights(self.model, self.chip, plans[group[0].name])
            try:
                for m in group:
                    plan = self.fit_on_replica(m, parts[m.name]) if m.name in parts else fitted[m.name]
                    yield m, plan, self.score(m, plan)
            finally:
                with self.clock("program"):
                    applied.restore()

    def fit_on_replica(self, method: MethodConfig, part: Plan) -> Plan:
        """ROMER order: the replacement part's routing on the replaced chip, observed once, then the fit."""
        data = method.calibration
        with self.clock("calibrate"), states.routing(self.model, part):
            replaced = self.ev._memo(("replaced-obs", self.name, self.chip, states.plan_key(part, self.chip), data),
                                     lambda: observe(self.model, self.ev.windows(self.name, data), data.batch_size))
        return self.fit(method, replaced=replaced)
