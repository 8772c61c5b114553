"""Validated method configurations: what a calibration method does, as data (pydantic, unknown keys rejected).

A ``MethodConfig`` names one row of a results table: ``kind`` says which machinery runs, the nested models
its options. ``default_methods()`` is the main job's list (README, "Main result").
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from romer.methods import REGISTRY, method_class
from romer.noise.io import IO_NAMES

KINDS = tuple(REGISTRY)  # the registered method kinds (romer.methods)
VARIANTS = ("replica", "split", "redirect", "prune-duplicate")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CalibrationData(_Strict):
    """Calibration text: ``sequences`` windows of ``window`` tokens from ``split`` of ``dataset`` (a name of
    ``romer.data.DATASETS``; ``data_path`` its local copy), disjoint from evaluation."""

    sequences: int = Field(64, ge=1)
    window: int = Field(512, ge=2)
    dataset: str = "bundled"
    data_path: str | None = None
    split: str = "train"
    batch_size: int = Field(8, ge=1)
    seed: int = 0  # which documents the windows come from

    @model_validator(mode="after")
    def _known_split(self):
        from romer.data.datasets import dataset_info

        info = dataset_info(self.dataset)  # UserError (a ValueError) for an unknown dataset
        if self.split not in info.splits:
            raise ValueError(f"dataset {self.dataset!r} has no split {self.split!r}; choose one of "
                             f"{', '.join(info.splits)}")
        return self


class ReplaceConfig(_Strict):
    """Expert replacement: r cold slots per layer get copies of the r hottest experts (shared experts never).

    count: r per layer; else ratio·E rounded (at least 1); else threshold τ: slots with f_e < τ·k/E.
    select "random": the control — random slots and random source experts (seeded by the chip seed).
    frequencies: measured on the chip-programmed model ("noisy", as on hardware) or the clean one.
    """

    variant: Literal["replica", "split", "redirect", "prune-duplicate"] = "replica"
    count: int | None = Field(None, ge=1)
    ratio: float | None = Field(1 / 16, gt=0, lt=1)
    threshold: float | None = Field(None, gt=0, lt=1)
    select: Literal["frequency", "random"] = "frequency"
    frequencies: Literal["noisy", "clean"] = "noisy"


class RecalibrateConfig(_Strict):
    """Percentile router-logit recalibration, a digital per-expert affine after the router (ROMER step 2).

    mode quantile (P1): z' = (z − Qn(50))/(Qn(hi) − Qn(lo))·(Qr(hi) − Qr(lo)) + Qr(50) per expert;
    shift (P2): z' = z + Qr(p) − Qn(p), for selection only; token (P3): z'_t = z_t · S_r / Q_p(|z_t|) per token;
    lstsq: z' = a·z + b per expert, least squares against the clean model's logits on the same calibration
    tokens (paired, unlike the percentile modes; not after a replacement, whose slots have no clean partner).
    reference "clean": each expert's own clean percentiles; "average": the expert-average of them (forces balance).
    apply_to: the corrected logits choose the experts only, or also give the gate weights.
    sequential (P1, P2): one calibration pass per MoE layer, so that each layer is fitted on the hidden states the
    corrected earlier layers produce (L passes instead of one). layers: correct only these decoder layers (the
    others keep their router as it is), to measure where the correction helps.
    """

    mode: Literal["quantile", "shift", "token", "lstsq"] = "quantile"
    percentiles: tuple[float, float] = (1.0, 99.0)
    p: float = Field(95.0, gt=0, le=100)
    reference: Literal["clean", "average"] = "clean"
    apply_to: Literal["selection", "selection+gates"] = "selection+gates"
    sequential: bool = False  # fit layer by layer, each on the model with the earlier layers already corrected
    layers: tuple[int, ...] | None = None  # decoder layers to correct (None: every MoE layer)

    @model_validator(mode="after")
    def _check(self) -> "RecalibrateConfig":
        lo, hi = self.percentiles
        if not 0 <= lo < 50 < hi <= 100:
            raise ValueError(f"percentiles must be (lo, hi) with 0 ≤ lo < 50 < hi ≤ 100, got {self.percentiles}")
        return self


class MaxNNConfig(_Strict):
    """MaxNN (arXiv 2603.02633): the experts with the largest maximum neuron weight norm, and attention, digital."""

    expert_share: float = Field(0.125, ge=0, le=1)
    experts: bool = True
    attention: bool = True


class BalanceConfig(_Strict):
    """Bias balancing without percentiles: a per-expert selection bias that equalises load on the calibration
    tokens (sign updates of size ``step``·std(logits), ``iterations`` times, like aux-loss-free balancing)."""

    iterations: int = Field(200, ge=1)
    step: float = Field(0.01, gt=0)


class CopiesConfig(_Strict):
    """K independently programmed arrays of every analog router, their conductances averaged: each router
    weight's noise variance falls to σ²/K (independent draws), at (K − 1) × the routers' weights of extra analog
    arrays. Kind ``copies`` alone needs no calibration text; on kind ``recalibrate`` the correction is fitted on
    the averaged routers (P1 for the error the copies share, averaging for the rest)."""

    count: int = Field(2, ge=2, le=64)


PART_OPTIONS = {"replace": ReplaceConfig, "recalibrate": RecalibrateConfig, "maxnn": MaxNNConfig,
                "balance": BalanceConfig, "copies": CopiesConfig}  # plan part → its options (methods.PART_ORDER)


class MethodConfig(_Strict):
    """One method of a results table. ``fit_seed_offset`` ≠ 0 fits the plan on another chip (seed + offset)
    than the one it is scored on: chip transfer. ``fit_time`` (s after programming) fits the plan on the scored
    chip read at that time instead of at the chip's own ``t_inference``: a plan fitted once and served later
    (the chip's draws do not depend on the time, so both reads are of the same devices). ``fit_io`` (an IO preset
    name, ``romer.noise.io``) fits the plan on the scored chip with that periphery instead of its own: e.g.
    ``ideal``, a router correction fitted on smooth logits and served through the chip's DAC and ADC."""

    name: str = Field(min_length=1)
    kind: str  # a registered kind (romer.methods.REGISTRY)
    replace: ReplaceConfig | None = None
    recalibrate: RecalibrateConfig | None = None
    maxnn: MaxNNConfig | None = None
    balance: BalanceConfig | None = None
    copies: CopiesConfig | None = None
    calibration: CalibrationData = CalibrationData()
    fit_seed_offset: int = 0
    fit_time: float | None = Field(None, ge=0)
    fit_io: str | None = None

    @field_validator("fit_io")
    @classmethod
    def _io_preset(cls, name: str | None) -> str | None:
        if name is not None and name not in IO_NAMES:
            raise ValueError(f"fit_io {name!r} is not an IO preset; choose one of {', '.join(IO_NAMES)}")
        return name

    @field_validator("kind")
    @classmethod
    def _registered(cls, kind: str) -> str:
        method_class(kind)  # ValueError naming the registered kinds
        return kind

    @model_validator(mode="after")
    def _fill(self) -> "MethodConfig":
        declared = method_class(self.kind)
        for part, options in PART_OPTIONS.items():
            wanted = part in declared.parts
            if getattr(self, part) is not None and not (wanted or part in declared.optional_parts):
                raise ValueError(f"method {self.name!r} of kind {self.kind!r} takes no '{part}' options")
            if wanted and getattr(self, part) is None:
                object.__setattr__(self, part, options())
        if self.recalibrate is not None and self.recalibrate.mode == "lstsq" and (
                self.replace is not None or self.copies is not None or self.recalibrate.sequential):
            raise ValueError(f"method {self.name!r}: recalibrate mode lstsq pairs the chip's logits with the clean "
                             "model's, so it cannot follow a replacement (kind romer) or router copies, or run "
                             "sequentially")
        return self

    @property
    def fits_elsewhere(self) -> bool:
        """Whether the plan is fitted on another chip, at another time or behind another periphery than the one it
        is scored on."""
        return self.fit_seed_offset != 0 or self.fit_time is not None or self.fit_io is not None

    @property
    def scores(self) -> str:
        """How its rows are scored: clean, chip, oracle or plan (``romer.methods``)."""
        return method_class(self.kind).scores

    @property
    def needs_fit(self) -> bool:
        """Whether the method has a plan to make."""
        return method_class(self.kind).makes_plan()

    @property
    def observes(self) -> bool:
        """Whether making its plan runs calibration text through the model (router copies need none)."""
        return self.needs_fit and method_class(self.kind).observes


def method(name: str, kind: str, **options) -> MethodConfig:
    return MethodConfig(name=name, kind=kind, **options)


def default_methods() -> list[MethodConfig]:
    """The main result's methods, every one scored on the same chips (README, "Main result")."""
    return [
        method("clean", "clean"),
        method("noisy", "noisy"),
        method("oracle routing", "oracle"),
        method("replacement", "replace"),
        method("random replacement", "replace", replace={"select": "random"}),
        method("recalibration", "recalibrate"),
        method("romer", "romer"),
        method("bias balancing", "balance"),
        method("maxnn-12.5%", "maxnn"),
        method("maxnn-12.5% experts", "maxnn", maxnn={"attention": False}),
        method("maxnn attention", "maxnn", maxnn={"experts": False}),
    ]


def ablation_methods() -> list[MethodConfig]:
    """ROMER's knobs one at a time around the defaults (README, "Ablations"), with the baselines they are read
    against. Router analog vs digital is the experiment config's placement axis (bundled config
    ``router-digital``), not a method."""
    methods = [method("clean", "clean"), method("noisy", "noisy"), method("oracle routing", "oracle"),
               method("romer", "romer")]
    for variant in VARIANTS:
        for ratio in ((1 / 16, 1 / 8, 1 / 4) if variant == "replica" else (1 / 16, 1 / 8)):
            label = f"{variant} r={ratio * 16:g}/16"
            methods.append(method(label, "replace", replace={"variant": variant, "ratio": ratio}))
            methods.append(method(f"random {label}", "replace",
                                  replace={"variant": variant, "ratio": ratio, "select": "random"}))
    methods.append(method("replica τ=0.1", "replace", replace={"threshold": 0.1}))
    methods.append(method("replica r=1/16, clean frequencies", "replace", replace={"frequencies": "clean"}))
    for p in (75, 90, 95, 99):
        methods.append(method(f"P1 ({100 - p:g}, {p:g})", "recalibrate", recalibrate={"percentiles": (100 - p, p)}))
    methods.append(method("P1 (1, 99) selection only", "recalibrate", recalibrate={"apply_to": "selection"}))
    methods.append(method("P1 (1, 99) expert-average reference", "recalibrate", recalibrate={"reference": "average"}))
    methods.append(method("P1 (1, 99) sequential", "recalibrate", recalibrate={"sequential": True}))
    for p in (50, 95):
        methods.append(method(f"P2 p={p:g}", "recalibrate", recalibrate={"mode": "shift", "p": p}))
        methods.append(method(f"P3 p={p:g}", "recalibrate", recalibrate={"mode": "token", "p": p}))
    for sequences in (8, 16, 32, 128):
        methods.append(method(f"P1 (1, 99), {sequences} calibration windows", "recalibrate",
                              calibration={"sequences": sequences}))
    methods.append(method("P1 (1, 99) fitted on another chip", "recalibrate", fit_seed_offset=1000))
    methods.append(method("romer fitted on another chip", "romer", fit_seed_offset=1000))
    return methods
