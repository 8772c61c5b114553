"""romer's Python API: the verbs a notebook needs, each a thin call into the room that does the work.

``import romer`` exposes these (lazily: no torch until the first one is used) next to the nouns they take and
return — :class:`~romer.noise.chip.Chip`, :class:`~romer.calibrate.plan.Plan`,
:class:`~romer.calibrate.config.MethodConfig`, :class:`~romer.eval.spec.EvalSpec`.

A study in a few calls (``examples/README.md``; each function's docstring has a runnable example)::

    model, tokenizer = romer.load("olmoe-tiny")                 # a bundled zoo model, or a local HF folder
    chip = romer.default_chip(seed=0)                           # PCM at 1 day, noise ×10, MoE blocks analog
    spec = romer.EvalSpec(split="test", max_tokens=16384)
    clean = romer.evaluate(model, tokenizer, spec)
    with romer.program(model, chip):                            # weights perturbed in place, restored on exit
        noisy = romer.evaluate(model, tokenizer, spec)
    plan = romer.calibrate(model, tokenizer, chip, "romer")     # a Plan (JSON: plan.save / romer.Plan.load)
    with romer.apply(model, chip, plan):                        # programmed + the plan's digital corrections
        calibrated = romer.evaluate(model, tokenizer, spec)

``romer.calibrate`` is also the package ``romer.calibrate`` (calling it calls :func:`calibrate`); here it is the
plain function.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from romer.methods import plan_kinds
from romer.errors import UserError

__all__ = ["Evaluation", "apply", "calibrate", "default_chip", "evaluate", "load", "presets", "program",
           "routing_stats", "save_calibrated", "serve"]

# kinds ``calibrate`` fits a plan for (clean and oracle routing are reference rows, not plans)
PLAN_KINDS = (*plan_kinds(), "noisy")  # noisy: the empty plan (the chip as programmed)


# --- models ---------------------------------------------------------------------------------------------------


def load(name_or_folder, **options):
    """``(model, tokenizer)`` from a zoo name or a local Hugging Face folder, in eval mode, never the network.

    A calibrated folder (:func:`save_calibrated`, ``romer calibrate --out``) comes with its plan's digital
    routing corrections installed. ``options`` as ``romer.models.load_model``: ``dtype`` (default float32),
    ``device`` (default cpu), ``allow_pickle``, ``trust_remote_code``, ``device_map``.

    >>> import romer
    >>> model, tokenizer = romer.load("olmoe-tiny")
    >>> model.config.model_type, model.config.num_experts
    ('olmoe', 64)
    """
    from romer.calibrate.folder import load_calibrated

    return load_calibrated(name_or_folder, **options)


# --- chips ----------------------------------------------------------------------------------------------------


def presets() -> dict:
    """The built-in noise presets by name, each with its default knobs (pass a name and knob overrides to
    ``Chip.from_options``; ``preset.describe()`` lists its equations and sources).

    >>> import romer
    >>> sorted(romer.presets())
    ['gaussian', 'gaussian-mult', 'hermes', 'pcm', 'reram']
    >>> romer.presets()["pcm"].prog_noise_scale
    1.0
    >>> chip = romer.Chip.from_options("gaussian", eta=0.05, placement="experts", seed=1)
    """
    from romer.noise.registry import PRESETS

    return {name: cls() for name, cls in PRESETS.items()}


def default_chip(seed: int = 0, *, scale: float | None = None, **overrides):
    """The main job's default chip (IBM PCM at t = 1 day with drift compensation, MoE blocks analog, per-expert
    mapping, programming and read noise ×10) with chip seed ``seed``.

    ``scale`` sets both PCM noise scales (``prog_noise_scale`` and ``read_noise_scale``: "PCM ×scale");
    ``overrides`` change any other option of ``Chip.from_options`` (preset, placement, mapping, t_inference) or
    knob of the preset; another preset starts from its own knobs (the ×10 belongs to PCM).

    >>> import romer
    >>> chip = romer.default_chip(seed=3)
    >>> chip.preset.name, chip.placement_name(), chip.seed, chip.preset.prog_noise_scale
    ('pcm', 'moe', 3, 10.0)
    >>> romer.default_chip(scale=3).preset.read_noise_scale
    3.0
    >>> romer.default_chip(preset="gaussian", eta=0.05).preset
    GaussianPreset(eta=0.05)
    """
    from romer.noise.chip import DEFAULT_CHIP, Chip

    base = dict(DEFAULT_CHIP)
    if overrides.get("preset", base["preset"]) != base["preset"]:
        base = {k: v for k, v in base.items() if not k.endswith("_scale")}
    if scale is not None:
        overrides = {"prog_noise_scale": scale, "read_noise_scale": scale, **overrides}
    return Chip.from_options(**{**base, **overrides, "seed": seed})


def program(model, chip, clean_store: str = "auto"):
    """Program ``model`` onto ``chip``: its analog weights are perturbed in place (static noise, as the hardware
    would) and the returned handle's ``restore()`` — or leaving the ``with`` block — writes the clean weights back
    bit for bit. ``clean_store``: where the clean copies wait, "memory", "disk" or "auto" (see
    ``romer.noise.chip.program``).

    >>> import romer, torch
    >>> model, tokenizer = romer.load("olmoe-tiny")
    >>> before = model.model.layers[0].mlp.experts.down_proj.detach().clone()
    >>> with romer.program(model, romer.default_chip()) as programmed:
    ...     torch.equal(model.model.layers[0].mlp.experts.down_proj, before)
    False
    >>> torch.equal(model.model.layers[0].mlp.experts.down_proj, before)
    True
    """
    from romer.noise.chip import program as program_chip

    return program_chip(model, chip, clean_store)


# --- evaluation -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Evaluation:
    """What :func:`evaluate` scored: the spec, the perplexity (None when ``ppl="none"``) and the zero-shot task
    scores (``{task: TaskScore}``, empty without tasks)."""

    spec: Any  # EvalSpec
    perplexity: Any = None  # romer.eval.perplexity.PerplexityResult | None
    tasks: dict = field(default_factory=dict)

    @property
    def ppl(self) -> float | None:
        """Token perplexity (None when the spec scores tasks only)."""
        return None if self.perplexity is None else self.perplexity.ppl

    def to_dict(self) -> dict:
        return {"spec": self.spec.describe(),
                "perplexity": None if self.perplexity is None else self.perplexity.to_dict(),
                "tasks": {name: score.to_dict() for name, score in self.tasks.items()}}

    def __str__(self) -> str:
        parts = [] if self.ppl is None else [f"PPL {self.ppl:.2f}"]
        parts += [f"{name} {metric} {value:.3f}" for name, score in self.tasks.items()
                  for metric, value in list(score.metrics.items())[-1:]]
        return f"{', '.join(parts)} ({self.spec.label})"


def _spec(spec, spec_fields: Mapping):
    from romer.eval.spec import EvalSpec

    if spec is None:
        return EvalSpec(**spec_fields)
    if isinstance(spec, Mapping):
        spec = EvalSpec.from_dict(spec)
    return spec.with_(**spec_fields) if spec_fields else spec


def _on_chip(model, chip, plan):
    """The model on ``chip`` (running ``plan`` when given) for the length of a ``with`` block; as it is without."""
    if chip is None:
        if plan is not None:
            raise UserError("a plan needs the chip it runs on (chip=...)")
        return nullcontext()
    return apply(model, chip, plan) if plan is not None else program(model, chip)


def evaluate(model, tokenizer, spec=None, *, chip=None, plan=None, **spec_fields) -> Evaluation:
    """Score ``model`` as it is now (clean, programmed, calibrated) on an evaluation spec: perplexity, and the
    zero-shot tasks when the spec names any.

    ``spec``: an ``EvalSpec`` (or a dict of its fields); ``spec_fields`` build one or change the given one:
    ``dataset``, ``data_path``, ``split`` (default test), ``order``, ``max_tokens`` (default: the whole split),
    ``ppl`` (windows | documents | none), ``window`` (512), ``batch_size``, ``dtype``, ``tasks``, ``task_data``,
    ``task_limit``. With ``chip`` the model is scored programmed onto it (and running ``plan`` when given), then
    restored.

    >>> import romer
    >>> model, tokenizer = romer.load("olmoe-tiny")
    >>> clean = romer.evaluate(model, tokenizer, max_tokens=256, window=128)
    >>> clean.perplexity.tokens, clean.spec.label
    (256, 'bundled test, shuffled order, first 256 tokens, windows of 128, float32')
    >>> noisy = romer.evaluate(model, tokenizer, clean.spec, chip=romer.default_chip(seed=1))
    >>> noisy.ppl > clean.ppl
    True
    """
    spec = _spec(spec, spec_fields)
    with _on_chip(model, chip, plan):
        result = None if spec.ppl == "none" else spec.perplexity(model, tokenizer)
        return Evaluation(spec, result, spec.task_scores(model, tokenizer))


def routing_stats(model, tokenizer, spec=None, *, chip=None, plan=None, **spec_fields):
    """Routing statistics per MoE layer (``romer.routing.RoutingStats``: load CV, entropy, max/mean, cold
    experts) of ``model`` on the spec's text (see :func:`evaluate` for ``spec`` and ``spec_fields``).

    With ``chip`` (and optionally ``plan``) the model is also run programmed onto the chip, and the stats are the
    chip's, compared with the clean model's on the same tokens: KL(chip ‖ clean), top-k Jaccard, top-1 changes.
    ``stats.table_rows()`` formats them; ``stats.overall`` averages over layers. For raw counts and logit
    percentiles use ``romer.record_routing(model)`` around any forward passes.

    >>> import romer
    >>> model, tokenizer = romer.load("olmoe-tiny")
    >>> clean_spec = romer.EvalSpec(max_tokens=256, window=128)
    >>> clean = romer.routing_stats(model, tokenizer, clean_spec)
    >>> [s.layer for s in clean.layers], clean.layers[0].num_experts
    ([0, 1, 2, 3], 64)
    >>> on_chip = romer.routing_stats(model, tokenizer, clean_spec, chip=romer.default_chip())
    >>> 0 < on_chip.overall["jaccard"] < 1
    True
    >>> ids = tokenizer("Call me Ishmael.", return_tensors="pt").input_ids
    >>> with romer.record_routing(model) as record:              # any forward passes: raw counts, percentiles
    ...     _ = model(input_ids=ids)
    >>> record.tokens == ids.numel(), record.usage().counts.shape       # [MoE layers, experts]
    (True, torch.Size([4, 64]))
    """
    from romer.routing import RoutingStats, record_routing

    spec = _spec(spec, spec_fields)
    if spec.ppl == "none":
        raise UserError("routing statistics need text to run: the spec scores tasks only (ppl none)")
    text = spec.text(tokenizer)
    with record_routing(model, keep_topk=chip is not None) as clean:
        spec.perplexity(model, tokenizer, text)
    if chip is None:
        return RoutingStats.from_record(clean)
    with _on_chip(model, chip, plan), record_routing(model, keep_topk=True) as on_chip:
        spec.perplexity(model, tokenizer, text)
    return RoutingStats.from_record(on_chip, reference=clean)


# --- calibration ----------------------------------------------------------------------------------------------


def _method(method, calibration: Mapping):
    """A MethodConfig from a kind name, a dict (MethodConfig fields; ``name`` defaults to the kind) or a
    MethodConfig, with ``calibration`` (CalibrationData fields) merged into its calibration data."""
    from romer.calibrate.config import MethodConfig

    if isinstance(method, str):
        if method not in PLAN_KINDS:
            raise UserError(f"unknown method {method!r}; choose one of {', '.join(PLAN_KINDS)}, or give a "
                            "MethodConfig or a dict of its fields")
        payload = {"name": method, "kind": method}
    elif isinstance(method, Mapping):
        payload = {"name": method.get("kind", ""), **method}
    elif isinstance(method, MethodConfig):
        payload = method.model_dump()
    else:
        raise UserError(f"method must be a kind name, a dict or a MethodConfig, got {type(method).__name__}")
    if calibration:
        payload["calibration"] = {**dict(payload.get("calibration") or {}), **calibration}
    config = MethodConfig.model_validate(payload)
    if config.kind not in PLAN_KINDS:
        raise UserError(f"method kind {config.kind!r} makes no plan; choose one of {', '.join(PLAN_KINDS)}")
    return config


def calibrate(model, tokenizer, chip, method="recalibrate", **calibration):
    """Fit a calibration plan for ``model`` on ``chip``: calibration text (the train split, disjoint from
    evaluation) runs through the clean model and the chip-programmed one, and the method decides what to fix.
    The model is left as it was. Returns a ``Plan`` (JSON: ``plan.save(path)``, ``Plan.load(path)``); run it
    with :func:`apply`, or write a calibrated folder with :func:`save_calibrated`.

    ``method``: a kind — "recalibrate" (percentile router recalibration, P1: the recommendation), "romer"
    (expert replacement, then recalibration), "replace", "maxnn", "balance", "copies", "noisy" (an empty plan) —
    or a ``MethodConfig`` or a dict of its fields (e.g. ``{"kind": "romer", "replace": {"variant": "split"}}``).
    ``calibration`` overrides the calibration data: ``sequences`` (default 64), ``window`` (512),
    ``batch_size``, ``dataset``, ``data_path``, ``split``, ``seed``.

    >>> import romer
    >>> model, tokenizer = romer.load("olmoe-tiny")
    >>> plan = romer.calibrate(model, tokenizer, romer.default_chip(), "recalibrate", sequences=4, window=128)
    >>> plan.method["kind"], plan.stats["calibration_tokens"], [fix.layer for fix in plan.router]
    ('recalibrate', 512, [0, 1, 2, 3])
    >>> romer.Plan.from_dict(plan.to_dict()).to_dict() == plan.to_dict()
    True
    """
    from romer.calibrate.calibrator import Calibrator
    from romer.calibrate.plan import Plan

    config = _method(method, calibration)
    if not config.needs_fit:  # "noisy": the model exactly as programmed
        plan = Plan.none(chip)
        plan.method = config.model_dump(mode="json")
        return plan
    calibrator = Calibrator(config)
    windows = calibrator.windows(tokenizer) if config.observes else None
    return calibrator.fit(model, windows, chip)


def apply(model, chip, plan):
    """Run ``plan`` on ``model`` programmed onto ``chip`` (replica copies, digital experts and routing
    corrections included); the returned handle's ``restore()`` — or leaving the ``with`` block — gives the clean
    model back. ``chip`` None leaves the weights as they are (a folder already holding the chip's read-back
    weights). A plan fitted on another model is refused before anything changes.

    >>> import romer
    >>> model, tokenizer = romer.load("olmoe-tiny")
    >>> chip = romer.default_chip()
    >>> plan = romer.calibrate(model, tokenizer, chip, sequences=4, window=128)
    >>> spec = romer.EvalSpec(max_tokens=256, window=128)
    >>> with romer.apply(model, chip, plan):
    ...     calibrated = romer.evaluate(model, tokenizer, spec)
    >>> romer.evaluate(model, tokenizer, spec).ppl < calibrated.ppl        # the clean model is back
    True
    """
    from romer.calibrate.apply import apply as apply_plan

    return apply_plan(model, chip, plan)


def save_calibrated(model, tokenizer, chip, plan, out) -> Path:
    """Write a calibrated model folder: ``model`` running ``plan`` on ``chip`` (the chip's read-back weights,
    replicas and digital parts included), the tokenizer, ``plan.json`` and ``chip.json``. :func:`load` reloads it
    with its routing corrections; plain ``transformers`` loads the weights (the whole model when the plan does not
    change routing). ``out`` must not exist yet; the model is left as it was.

    >>> import romer, tempfile
    >>> model, tokenizer = romer.load("olmoe-tiny")
    >>> chip = romer.default_chip()
    >>> plan = romer.calibrate(model, tokenizer, chip, sequences=4, window=128)
    >>> tmp = tempfile.TemporaryDirectory()
    >>> folder = romer.save_calibrated(model, tokenizer, chip, plan, f"{tmp.name}/calibrated")
    >>> sorted(p.name for p in folder.glob("*.json"))
    ['chip.json', 'config.json', 'generation_config.json', 'plan.json', 'tokenizer.json', 'tokenizer_config.json']
    >>> calibrated, _ = romer.load(folder)                      # the chip's weights, the plan's routing
    >>> spec = romer.EvalSpec(max_tokens=256, window=128)
    >>> romer.evaluate(calibrated, tokenizer, spec).ppl > romer.evaluate(model, tokenizer, spec).ppl
    True
    >>> tmp.cleanup()
    """
    from romer.calibrate.folder import save_calibrated as save_folder

    return save_folder(model, tokenizer, chip, plan, out)


# --- in service -----------------------------------------------------------------------------------------------


def serve(model, tokenizer, chip, spec=None, *, plan=None, monitor=None, reference=None, step: int = 1,
          **spec_fields):
    """Serve the spec's text through ``model`` on ``chip`` with a streaming routing monitor that refits P1 from
    the served tokens (``romer.calibrate.monitor``): each step of ``step`` windows is scored, then the monitor
    logs it (load CV, cold experts, logit drift per layer) and may refit, so no token is scored by a correction
    fitted on it. Returns ``romer.calibrate.serving.Served`` (``ppl``, ``log``; ``to_dict()``); the model is left
    as it was.

    ``monitor``: a ``MonitorConfig`` or a dict of its fields (``refit_every`` tokens, ``drift_threshold``,
    ``percentiles``, ``bins``, ``min_tokens``, ``cold``, ``reset_after_refit``). ``plan``: the starting plan
    (its weights and its routing corrections; None: the chip as programmed). ``reference``: the clean
    percentiles P1 maps onto (``romer.calibrate.monitor.reference_percentiles``), or a dict of calibration-data
    fields to measure them on the clean model (default: 4 windows of the train split). ``spec`` and
    ``spec_fields`` as :func:`evaluate` (default split validation).

    >>> import romer
    >>> model, tokenizer = romer.load("olmoe-tiny")
    >>> served = romer.serve(model, tokenizer, romer.default_chip(), max_tokens=512, window=128,
    ...                      monitor={"refit_every": 254}, reference={"sequences": 2, "window": 128})
    >>> served.tokens, [entry.refit for entry in served.log]
    (512, [None, 'schedule', None, 'schedule', None])
    """
    from romer.calibrate.apply import apply as apply_plan
    from romer.calibrate.calibrator import observe
    from romer.calibrate.config import CalibrationData
    from romer.calibrate.data import calibration_windows
    from romer.calibrate.monitor import MonitorConfig, RoutingMonitor, reference_percentiles
    from romer.calibrate.plan import Plan
    from romer.calibrate.serving import serve_text

    spec = _spec(spec, {"split": "validation", **spec_fields} if spec is None else spec_fields)
    config = monitor if isinstance(monitor, MonitorConfig) else MonitorConfig(**dict(monitor or {}))
    if reference is None or isinstance(reference, Mapping):
        data = CalibrationData(**{"sequences": 4, **dict(reference or {})})
        clean = observe(model, calibration_windows(tokenizer, data), data.batch_size)
        reference = reference_percentiles(clean.record, config.levels)
    plan = plan or Plan.none(chip)
    weights = Plan.from_dict({**plan.to_dict(), "router": []})  # the monitor routes with the plan's corrections
    with apply_plan(model, chip, weights), RoutingMonitor(model, reference, config, plan.router) as watching:
        return serve_text(model, tokenizer, spec.text(tokenizer), watching, window=spec.window, step=step)
