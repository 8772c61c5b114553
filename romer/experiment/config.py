"""Experiment configs: models × noise presets × placements × inference times × chips × methods, as validated data.

An ``ExperimentConfig`` is read from YAML (a bundled name such as ``default`` or a file) with ``--set key=value``
overrides; unknown keys are rejected and every mistake is one line (:class:`UserError`). ``groups()`` expands it
into :class:`TrialGroup` s — one (model, chip) pair each, scored with every method on that same chip — and each
(group, method) is one trial with a stable key, the unit the results store records and a rerun skips.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from romer.calibrate.config import CalibrationData, MethodConfig, ablation_methods, default_methods
from romer.noise.chip import DEFAULT_CHIP, Chip
from romer.noise.io import get_io
from romer.noise.placement import parse_placement
from romer.noise.presets import NoisePreset
from romer.noise.registry import get_preset, noise_label

CONFIG_DIR = Path(__file__).parent / "configs"
MAX_CHIPS = 10_000  # chips per setting: more is a typo (1e9), not a study
MAX_SEED = 2**31 - 1 - MAX_CHIPS
ZOO_MODELS = ("olmoe-tiny", "qwenmoe-tiny", "deepseekmoe-tiny")
METHOD_LISTS = {"default": default_methods, "ablations": ablation_methods}
NOT_HASHED = {"name", "run"}  # labels and where/how it runs, not what is measured


def canonical_json(payload: Any) -> str:
    """Sorted keys, no whitespace, UTF-8: the same data always gives the same string (and hash)."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def sha256(payload: Any) -> str:
    return hashlib.sha256(canonical_json(payload).encode("utf-8")).hexdigest()


def _unique(values: list, what: str) -> list:
    seen = set()
    for v in values:
        if v in seen:
            raise ValueError(f"{what} {v!r} appears twice")
        seen.add(v)
    return values


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NoiseSpec(_Strict):
    """One noise model: a preset name (pcm, hermes, reram, gaussian, gaussian-mult) or a preset YAML file (e.g.
    from ``romer chip fit``), its constants overridden, and the label that names it in tables."""

    preset: str = Field(min_length=1)
    overrides: dict[str, Any] = {}
    label: str | None = None

    @model_validator(mode="after")
    def _resolve(self) -> "NoiseSpec":
        preset = get_preset(self.preset, **self.overrides)  # UserError for an unknown preset or constant
        object.__setattr__(self, "overrides", {k: getattr(preset, k) for k in sorted(self.overrides)})
        return self

    @cached_property
    def resolved(self) -> NoisePreset:
        return get_preset(self.preset, **self.overrides)

    @property
    def name(self) -> str:
        return noise_label(self.preset, self.overrides, self.label)


DEFAULT_NOISE = NoiseSpec(preset=DEFAULT_CHIP["preset"], label="pcm×10",
                          overrides={k: v for k, v in DEFAULT_CHIP.items() if k.endswith("_scale")})


class ChipSettings(_Strict):
    """The simulated chips: every preset × placement × inference time (s after programming), each on ``chips``
    chips with seeds seed … seed + chips − 1 (the same seeds everywhere, so settings are paired)."""

    presets: list[NoiseSpec] = Field([DEFAULT_NOISE], min_length=1)
    placements: list[str] = Field([DEFAULT_CHIP["placement"]], min_length=1)
    mapping: Literal["expert", "channel", "tile", "tensor"] = DEFAULT_CHIP["mapping"]
    t_inference: list[float] = Field([DEFAULT_CHIP["t_inference"]], min_length=1)
    chips: int = Field(5, ge=1, le=MAX_CHIPS)
    seed: int = Field(0, ge=0, le=MAX_SEED)  # chip seeds seed … seed + chips − 1 stay below 2³¹ (SQLite, torch)
    io: list[str] = Field(["ideal"], min_length=1)  # IO models (romer.noise.io): names or files, an axis

    @field_validator("presets", "placements", "t_inference", "io", mode="before")
    @classmethod
    def _listify(cls, value):
        return [value] if isinstance(value, (str, int, float, dict)) else value

    @field_validator("presets", mode="before")
    @classmethod
    def _named(cls, value):
        return [{"preset": v} if isinstance(v, str) else v for v in value] if isinstance(value, list) else value

    @field_validator("placements")
    @classmethod
    def _placements(cls, value: list[str]) -> list[str]:
        for spec in value:
            parse_placement(spec)
        return _unique(value, "placement")

    @field_validator("io")
    @classmethod
    def _io(cls, value: list[str]) -> list[str]:
        _unique([get_io(spec).name for spec in value], "io name")
        return value

    @field_validator("t_inference")
    @classmethod
    def _times(cls, value: list[float]) -> list[float]:
        if any(t < 0 for t in value):
            raise ValueError(f"inference times must be ≥ 0 s, got {value}")
        return _unique(value, "inference time")

    @model_validator(mode="after")
    def _check(self) -> "ChipSettings":
        _unique([p.name for p in self.presets], "preset label")
        for spec in self.presets:
            late = [t for t in self.t_inference if t > spec.resolved.max_t_inference]
            if late:
                raise ValueError(f"preset {spec.name} has device data up to t = {spec.resolved.max_t_inference:g} s "
                                 f"only, got t_inference {late[0]:g}")
        return self


class EvalSettings(_Strict):
    """Perplexity on the first ``max_tokens`` tokens of ``split`` (None: the whole split) in windows of ``window``
    tokens (BOS included), ``batch_size`` windows per forward pass; ``dtype`` bfloat16 runs the scoring forward
    passes (not calibration) under bf16 autocast, the weights staying float32. float32 is the default: exact,
    and faster than bf16 autocast on the project's CPU (README, "Time")."""

    dataset: str = "bundled"  # a name of romer.data.DATASETS; data_path its local copy
    data_path: str | None = None
    split: str = "test"
    order: Literal["shuffled", "source"] | None = None  # romer.eval.spec: None is shuffled for bundled, else source
    max_tokens: int | None = Field(16384, ge=1)
    window: int = Field(512, ge=2)
    batch_size: int = Field(8, ge=1)
    device: str = "cpu"  # cpu, cuda, cuda:N or auto: where the model is loaded, programmed and scored
    weights_dtype: Literal["float32", "bfloat16", "float16"] = "float32"  # the model's weights (noise in fp32)
    tasks: list[str] = Field(default_factory=list)  # zero-shot tasks through lm-eval, scored on every method
    task_data: dict[str, str] = Field(default_factory=dict)  # task → local file (arc_easy, piqa, …)
    task_limit: int | None = Field(None, ge=1)  # only the first N items of each task
    dtype: Literal["float32", "bfloat16"] = "float32"  # bfloat16: PPL within 0.03 % of float32, slower on CPU


    @model_validator(mode="after")
    def _known_data(self):
        from romer.data.datasets import dataset_info
        from romer.devices import parse_device

        parse_device(self.device)  # UserError (a ValueError) for an unknown device or CUDA without a GPU

        info = dataset_info(self.dataset)
        if self.split not in info.splits:
            raise ValueError(f"dataset {self.dataset!r} has no split {self.split!r}; choose one of "
                             f"{', '.join(info.splits)}")
        unknown = sorted(set(self.task_data) - set(self.tasks))
        if unknown:
            raise ValueError(f"task_data names task(s) not in tasks: {', '.join(unknown)}")
        return self


class RunSettings(_Strict):
    """Where and how it runs (not part of the config hash): output folder, store, backend, Ray address/workers."""

    out: str | None = None
    store: str | None = None
    backend: Literal["local", "ray"] = "local"
    address: str | None = None
    workers: int = Field(2, ge=1)
    # GPUs per Ray worker where the cluster has GPUs and eval.device is not cpu (null: 1; 0.5: two per GPU)
    gpus_per_worker: float | None = Field(None, ge=0)


class ExperimentConfig(_Strict):
    """A whole experiment. ``methods`` is a list of method configs or names from the default / ablation lists, or
    one of the words ``default`` / ``ablations``; the experiment's ``calibration`` fills every method's calibration
    options the method does not set itself."""

    name: str = Field("experiment", min_length=1)
    models: list[str] = Field(list(ZOO_MODELS), min_length=1)
    chip: ChipSettings = ChipSettings()
    methods: list[MethodConfig] = Field(default_factory=default_methods, min_length=1)
    eval: EvalSettings = EvalSettings()
    calibration: CalibrationData = CalibrationData(sequences=32)  # the main job's (README, "Time")
    run: RunSettings = RunSettings()

    @field_validator("models", mode="before")
    @classmethod
    def _models_list(cls, value):
        return [value] if isinstance(value, str) else value

    @field_validator("models")
    @classmethod
    def _models(cls, value: list[str]) -> list[str]:
        return _unique(value, "model")

    @field_validator("methods", mode="before")
    @classmethod
    def _methods(cls, value):
        if isinstance(value, str):
            if value not in METHOD_LISTS:
                raise ValueError(f"unknown method list {value!r}; use {' or '.join(METHOD_LISTS)}, or a list")
            return METHOD_LISTS[value]()
        if not isinstance(value, list):
            return value
        catalog = {m.name: m for make in reversed(list(METHOD_LISTS.values())) for m in make()}
        out = []
        for item in value:
            if isinstance(item, str):
                if item not in catalog:
                    raise ValueError(f"unknown method {item!r}; give its options (name, kind, …) or one of the "
                                     f"default methods: {', '.join(m.name for m in default_methods())}")
                item = catalog[item]
            out.append(item)
        return out

    @field_validator("methods")
    @classmethod
    def _method_names(cls, value: list[MethodConfig]) -> list[MethodConfig]:
        _unique([m.name for m in value], "method name")
        return value

    @model_validator(mode="after")
    def _calibration_is_not_evaluation(self) -> "ExperimentConfig":
        """Calibration text must never be the evaluation text (same dataset, copy and split)."""
        e = self.eval
        for m in [self.calibration, *(m.calibration for m in self.methods)]:
            if (m.dataset, m.data_path, m.split) == (e.dataset, e.data_path, e.split):
                raise ValueError(f"calibration and evaluation read the same text ({e.dataset} {e.split}"
                                 f"{'' if e.data_path is None else ' at ' + e.data_path}); calibrate on "
                                 "another split or dataset")
        return self

    @model_validator(mode="after")
    def _fill_calibration(self) -> "ExperimentConfig":
        base = self.calibration.model_dump()
        filled = []
        for m in self.methods:
            own = m.calibration
            data = CalibrationData(**{**base, **{k: getattr(own, k) for k in own.model_fields_set}})
            filled.append(m.model_copy(update={"calibration": data}))
        object.__setattr__(self, "methods", filled)
        return self

    # --- derived ------------------------------------------------------------------------------------------

    def canonical(self) -> dict:
        """The hashed content: everything but labels and run options, with each preset resolved to its constants
        (so a preset file's content counts, not its path)."""
        payload = self.model_dump(mode="json", exclude=NOT_HASHED)
        if payload["eval"]["order"] is None:  # the default order hashes as before the key existed
            del payload["eval"]["order"]
        for method in payload["methods"]:  # a plan fitted at the scored time hashes as before fit_time existed
            for key in ("fit_time", "fit_io"):  # ... and one fitted behind the chip's own periphery
                if method[key] is None:
                    del method[key]
        for entry, spec in zip(payload["chip"]["presets"], self.chip.presets):
            entry["resolved"] = spec.resolved.to_dict()
        ios = [get_io(spec) for spec in self.chip.io]
        if all(io.is_ideal for io in ios):  # configs without IO models hash as before the key existed
            del payload["chip"]["io"]
        else:
            payload["chip"]["io"] = [io.to_dict() for io in ios]
        return payload

    @cached_property
    def config_hash(self) -> str:
        """SHA-256 (hex) of the canonical JSON of :meth:`canonical`."""
        return sha256(self.canonical())

    def groups(self) -> list["TrialGroup"]:
        """models × presets × placements × inference times × chip seeds, in that order; every group holds every
        method."""
        methods = tuple(m.model_dump(mode="json") for m in self.methods)
        eval_spec = self.eval.model_dump(mode="json")
        calibration = self.calibration.model_dump(mode="json")
        c = self.chip
        out = []
        for model in self.models:
            for spec in c.presets:
                for io in map(get_io, c.io):
                    label = spec.name if io.is_ideal else f"{spec.name} + io {io.name}"
                    for placement in c.placements:
                        for t in c.t_inference:
                            for seed in range(c.seed, c.seed + c.chips):
                                chip = Chip(spec.resolved, placement, c.mapping, seed, t, io)
                                out.append(TrialGroup(model, chip.to_dict(), methods, eval_spec, calibration,
                                                      self.config_hash, label))
        return out

    def trial_count(self) -> int:
        c = self.chip
        return (len(self.models) * len(c.presets) * len(c.io) * len(c.placements) * len(c.t_inference) * c.chips
                * len(self.methods))


@dataclass(frozen=True)
class TrialGroup:
    """One (model, chip) pair scored with several methods on that same chip.

    chip: ``Chip.to_dict()`` (preset constants, placement, mapping, seed, t_inference in s); methods:
    ``MethodConfig.model_dump`` dicts; eval: split, max_tokens, window, batch_size; calibration: the experiment's
    calibration data; preset_label: the preset's name in tables.
    """

    model: str
    chip: dict
    methods: tuple
    eval: dict
    calibration: dict
    config_hash: str
    preset_label: str = ""

    @property
    def preset(self) -> str:
        return self.preset_label or self.chip["preset"]["name"]

    @property
    def method_names(self) -> list[str]:
        return [m["name"] for m in self.methods]

    def trial_key(self, method: str) -> str:
        """SHA-256 of (config hash, model, preset, t, chip seed, placement, method name)."""
        return sha256([self.config_hash, self.model, self.preset, self.chip["t_inference"], self.chip["seed"],
                       self.chip["placement"], method])

    def trial_keys(self) -> dict[str, str]:
        """Method name → trial key, in the group's method order."""
        return {name: self.trial_key(name) for name in self.method_names}
