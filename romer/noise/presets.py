"""Noise presets: frozen, hashable, JSON-serialisable descriptions of a device, each able to program a weight.

``preset.program(weight, group=..., t_inference=..., generator=...)`` returns the weight read back from the
chip t_inference seconds after programming (a new tensor of the same shape, dtype and device — or ``out``,
which may be ``weight`` itself to program in place): map onto differential pairs per mapping group → program
ĝ⁺ and ĝ⁻ independently → drift → read noise → map back → (optionally) global drift compensation per matrix.
Arithmetic is float32 on the weight's device, a few rows at a time, cast back once per matrix.

Draws come from ``generator`` (a ``torch.Generator`` or a ``romer.noise.draws.NormalStream``; a generator is
read as a fixed-block stream), in a fixed order: the compensation probe x ~ N(0,1)^[in×16] first (always, so
switching compensation on or off leaves every device draw unchanged), then matrix by matrix, chunk of rows by
chunk of rows: the devices holding each weight's sign (target |w|/s), then the pairs' other devices (target 0).
A matrix whose weights are all zero reads back 0 and draws nothing. (A device that programming leaves at
exactly 0 conductance reads 0 at every time, so its drift and read draws are not needed; skipping them was
measured slower than drawing them — finding those devices costs more than the draws — so they are drawn.)
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple, Sequence

import torch
from torch import Tensor

from romer.errors import UserError
from romer.noise import functional as F
from romer.noise.draws import NormalSource, NormalStream, as_stream
from romer.noise.mapping import check_group, program_rows, through_devices

PROBE_COLUMNS = 16


class SigmaRow(NamedTuple):
    """Read-back statistics of one device (or normalised weight) programmed to ``g_target`` (units of g_max)."""

    g_target: float
    t_inference: float  # s
    mean: float
    std: float


@dataclass(frozen=True)
class NoisePreset:
    """Base class: knob validation, serialisation and the generic ``program`` checks."""

    name: ClassVar[str] = ""
    units: ClassVar[dict[str, str]] = {}
    max_t_inference: ClassVar[float] = float("inf")  # s; the latest time the device data covers

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, _coerce(self.name, f.name, f.type, getattr(self, f.name)))

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict with ``name`` and every knob; :func:`preset_from_dict` inverts it."""
        return {"name": self.name, **dataclasses.asdict(self)}

    def knob_rows(self) -> list[tuple[str, str]]:
        """(knob, value with unit) for every knob."""
        rows = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            text = ("on" if value else "off") if isinstance(value, bool) else f"{value:g}"
            unit = self.units.get(f.name, "")
            rows.append((f.name, f"{text} {unit}".strip()))
        return rows

    def describe(self) -> list[tuple[str, str]]:  # pragma: no cover - overridden
        raise NotImplementedError

    @torch.no_grad()
    def program(self, weight: Tensor, *, group: str = "expert", t_inference: float = 0.0,
                generator: NormalSource, tile_rows: int = 512, out: Tensor | None = None) -> Tensor:
        """Read-back weight of ``weight`` t_inference s after programming (see the module docstring)."""
        self._check_call(weight, group, t_inference, generator, tile_rows)
        stream = as_stream(generator, bound=self.draw_bound(weight))
        try:
            return self._program(weight, group, float(t_inference), stream, tile_rows, out)
        finally:
            if stream is not generator:
                stream.close()

    def draw_bound(self, weight: Tensor) -> int:
        """The most normal draws programming ``weight`` can take (sizes the draw stream's blocks)."""
        return weight.numel()

    def _program(self, weight: Tensor, group: str, t_inference: float, stream: NormalStream, tile_rows: int,
                 out: Tensor | None) -> Tensor:  # pragma: no cover - overridden
        raise NotImplementedError

    def _check_call(self, weight: Tensor, group: str, t_inference: float, generator, tile_rows: int) -> None:
        check_group(group, tile_rows)
        if not isinstance(generator, (torch.Generator, NormalStream)):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        if not weight.is_floating_point() or weight.ndim == 0:
            raise UserError(f"can only program floating-point vectors or matrices "
                            f"(got {weight.dtype}, {weight.ndim}-d)")
        if not (isinstance(t_inference, (int, float)) and math.isfinite(t_inference) and t_inference >= 0):
            raise UserError(f"t_inference must be a finite number of seconds >= 0 (got {t_inference!r})")


MAX_SCALE = 1000.0  # a scale knob above this makes noise 1000× the device's: a typo, not an experiment


def _coerce(preset: str, knob: str, kind: str, value: Any) -> float | bool:
    """A knob value as float (finite, ≥ 0; a ``*_scale`` knob ≤ MAX_SCALE) or bool; numbers and booleans may come
    as strings (CLI)."""
    text = str(value).strip().lower()
    if kind == "bool":
        if isinstance(value, bool) or text in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            return value if isinstance(value, bool) else text in ("1", "true", "yes", "on")
        raise UserError(f"{preset}: {knob} must be true or false (got {value!r})")
    try:
        out = float("nan") if isinstance(value, bool) else float(value)
    except (TypeError, ValueError):
        out = float("nan")
    if not math.isfinite(out) or out < 0:
        raise UserError(f"{preset}: {knob} must be a finite number >= 0 (got {value!r})")
    if knob.endswith("scale") and out > MAX_SCALE:
        raise UserError(f"{preset}: {knob} = {out:g} is absurd (noise {out:g}× the device's); at most {MAX_SCALE:g}")
    return out


@dataclass(frozen=True)
class DevicePreset(NoisePreset):
    """A device model on differential pairs. Subclasses define ``_devices``."""

    drift_compensation: bool = True

    def _devices(self, g_target: Tensor, t_inference: float, generator: NormalSource) -> tuple[Tensor, Tensor]:
        """(ĝ at the reference read, before drift and read noise; ĝ read at t_inference) per device."""
        raise NotImplementedError  # pragma: no cover

    def _check_time(self, t_inference: float) -> None:
        """Refuse times the device model has no data for (UserError)."""

    def draw_bound(self, weight: Tensor) -> int:
        # the probe, then at most three draws for each of the two devices of a weight
        return weight.shape[-1] * PROBE_COLUMNS + 6 * weight.numel()

    def _program(self, weight, group, t_inference, stream, tile_rows, out):
        self._check_time(t_inference)
        probe = F.standard_normal((weight.shape[-1], PROBE_COLUMNS), stream, weight.device)
        return through_devices(weight, lambda g: self._devices(g, t_inference, stream), group=group,
                               tile_rows=tile_rows, probe=probe if self.drift_compensation else None, out=out)

    def sigma_table(self, g_values: Sequence[float], t_values: Sequence[float], *,
                    n_samples: int = 20_000, seed: int = 0) -> list[SigmaRow]:
        """Measured (Monte Carlo, ``n_samples`` devices, fixed ``seed``) mean and std of one device's read-back
        normalised conductance ĝ at each (ĝ_T, t): programming + drift + read noise, no compensation."""
        rows = []
        for t in t_values:
            self._check_time(t)
            for g in g_values:
                gen = torch.Generator().manual_seed(seed)
                _, g_now = self._devices(torch.full((n_samples,), float(g)), float(t), gen)
                rows.append(SigmaRow(float(g), float(t), float(g_now.mean()), float(g_now.std())))
        return rows


_COMPENSATION = "per matrix: α = mean|W_prog·x| / mean|W_t·x|, x ~ N(0,1)^[in×16], W_prog before drift/read noise"


@dataclass(frozen=True)
class _PhaseChangePreset(DevicePreset):
    """PCM-like device: programming noise, power-law drift with a per-device ν, accumulated 1/f read noise.

    g_max_uS only labels µS readouts: the fitted σ's scale with g_max, so ĝ statistics do not depend on it.
    """

    units: ClassVar[dict[str, str]] = {"g_max_uS": "µS", "t0_s": "s", "t_read_s": "s"}
    prog_sigma: ClassVar = None  # ĝ_T → σ_prog (units of g_max)
    drift_exponent: ClassVar = None  # (ĝ_T, generator) → ν
    read_sigma: ClassVar = None  # (ĝ_prog, s since programming, t_read) → relative σ_read
    prog_noise_scale: float = 1.0
    read_noise_scale: float = 1.0
    drift_scale: float = 1.0
    g_max_uS: float = 25.0
    t0_s: float = 20.0
    t_read_s: float = 250e-9
    drift_compensation: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if min(self.g_max_uS, self.t0_s, self.t_read_s) <= 0:
            raise UserError(f"{self.name}: g_max_uS, t0_s and t_read_s must be > 0")

    def _devices(self, g_target, t_inference, generator):
        """ĝ_prog = max(0, ĝ_T + σ_prog·N); ν; ĝ_t = max(0, ĝ_prog·((t+t0)/t0)^(−ν)·(1 + σ_read·N'))."""
        sigma_prog = type(self).prog_sigma(g_target).mul_(self.prog_noise_scale)
        g_prog = F.program_conductance(g_target, sigma_prog, generator)
        nu = type(self).drift_exponent(g_target, generator).mul_(self.drift_scale)
        t_since_program = t_inference + self.t0_s
        sigma_read = type(self).read_sigma(g_prog, t_since_program, self.t_read_s).mul_(self.read_noise_scale)
        return g_prog, F.add_read_noise(F.drift(g_prog, nu, t_inference, self.t0_s), sigma_read, generator)

    def _describe_common(self) -> list[tuple[str, str]]:
        return [
            ("ν", "|μ_ν + σ_ν·N| × drift_scale, ĝ_T ≥ 1e-7"),
            ("drift", "ĝ_prog·((t + t0)/t0)^(−ν)"),
            ("σ_read", "Q_s·√ln((t + t0 + t_read)/(2·t_read)) × read_noise_scale, relative; present at t = 0"),
            ("compensation", _COMPENSATION if self.drift_compensation else "off"),
            *self.knob_rows(),
        ]


@dataclass(frozen=True)
class PCMPreset(_PhaseChangePreset):
    """IBM PCM (Joshi et al., Nat. Commun. 2020; Nandakumar et al., ICECS 2019), one device per sign."""

    name: ClassVar[str] = "pcm"
    prog_sigma: ClassVar = staticmethod(F.pcm_programming_sigma)
    drift_exponent: ClassVar = staticmethod(F.pcm_drift_exponent)
    read_sigma: ClassVar = staticmethod(F.pcm_read_noise_sigma)

    def describe(self) -> list[tuple[str, str]]:
        return [
            ("device", "PCM, one device per weight sign (differential pair); ĝ = g/g_max"),
            ("σ_prog", "(0.26348 + 1.9650·ĝ_T − 1.1731·ĝ_T²)·g_max/25 µS × prog_noise_scale"),
            ("μ_ν", "clip(−0.0155·ln ĝ_T + 0.0244, 0.049, 0.1)"),
            ("σ_ν", "clip(−0.0125·ln ĝ_T − 0.0059, 0.008, 0.045)"),
            ("Q_s", "min(0.0088 / max(ĝ_prog^0.65, 1e-3), 0.2)"),
            *self._describe_common(),
            ("source", "Joshi et al., Nat. Commun. 2020; Nandakumar et al., ICECS 2019"),
        ]


@dataclass(frozen=True)
class HermesPreset(_PhaseChangePreset):
    """IBM HERMES 64-core PCM chip (Le Gallo et al., Nat. Electron. 2023), two devices per weight sign.

    The two devices of a sign are modelled as one device of up to 20.7 µS holding the same state (as the
    published model does; the chip's multi-device refinement needs on-chip feedback).
    """

    name: ClassVar[str] = "hermes"
    prog_sigma: ClassVar = staticmethod(F.hermes_programming_sigma)
    drift_exponent: ClassVar = staticmethod(F.hermes_drift_exponent)
    read_sigma: ClassVar = staticmethod(F.hermes_read_noise_sigma)
    g_max_uS: float = 20.7
    t0_s: float = 300.0
    t_read_s: float = 512e-9

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.g_max_uS > F.HERMES_PROG_G_REF_US:
            raise UserError(f"{self.name}: g_max_uS is characterised up to {F.HERMES_PROG_G_REF_US} µS")

    def describe(self) -> list[tuple[str, str]]:
        return [
            ("device", "PCM on IBM HERMES, two devices per weight sign; ĝ = g/g_max"),
            ("σ_prog", "(0.16603 + 4.71806ĝ − 8.48101ĝ² + 4.68961ĝ³)·g_max/20.7 µS × prog_noise_scale"),
            ("μ_ν", "ĝ<0.0945: clip(−0.0387 ln ĝ − 0.0182, 0.072, 0.13); else −0.0436ĝ² − 0.0126ĝ + 0.0736"),
            ("σ_ν", "ĝ<0.3055: clip(−0.0117 ln ĝ − 0.0057, 0.0091, 0.04); else −0.0118ĝ² + 0.0093ĝ + 0.0073"),
            ("Q_s", "ĝ_prog<0.16: clip(−0.0117 ln ĝ − 0.0069, 0.015, 0.04); "
                    "else 0.0069ĝ³ − 0.0280ĝ² + 0.0211ĝ + 0.0123"),
            *self._describe_common(),
            ("source", "Le Gallo et al., Nat. Electron. 2023 (fits as in aihwkit HermesNoiseModel, 2 devices)"),
        ]


@dataclass(frozen=True)
class ReRAMPreset(DevicePreset):
    """ReRAM of the NeuRRAM chip (Wan et al., Nature 2022): measured spread around the target at 1 s, 1 day and
    2 days, no systematic drift (see :func:`romer.noise.functional.reram_read`). No data past 2 days."""

    name: ClassVar[str] = "reram"
    units: ClassVar[dict[str, str]] = {"g_max_uS": "µS"}
    max_t_inference: ClassVar[float] = float(max(F.RERAM_SIGMA_COEFFS_US))
    noise_scale: float = 1.0
    g_max_uS: float = 40.0
    drift_compensation: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.g_max_uS <= 0:
            raise UserError(f"{self.name}: g_max_uS must be > 0")

    def _check_time(self, t_inference: float) -> None:
        if t_inference > self.max_t_inference:
            raise UserError(f"reram: the device fits stop at {self.max_t_inference:.0f} s (2 days); "
                            f"got t_inference = {t_inference:g} s")

    def _devices(self, g_target, t_inference, generator):
        return F.reram_read(g_target, t_inference, generator, self.noise_scale)

    def describe(self) -> list[tuple[str, str]]:
        return [
            ("device", "ReRAM (NeuRRAM), one device per weight sign; ĝ = g/g_max"),
            ("σ(1 s)", "(0.348 + 16.030ĝ − 43.853ĝ² + 45.393ĝ³ − 16.815ĝ⁴)·g_max/40 µS"),
            ("σ(1 day)", "(0.701 + 22.086ĝ − 50.773ĝ² + 47.095ĝ³ − 16.458ĝ⁴)·g_max/40 µS"),
            ("σ(2 days)", "(0.782 + 20.274ĝ − 43.507ĝ² + 37.062ĝ³ − 11.934ĝ⁴)·g_max/40 µS"),
            ("σ(t)", "linear in ln t between fits; t ≤ 1 s → 1 s fit; t > 2 days refused; × noise_scale"),
            ("read", "ĝ_T + σ_1s·N₁ + √(σ_t² − σ_1s²)·N₂, clamped ≥ 0; no drift"),
            ("compensation", _COMPENSATION if self.drift_compensation else "off"),
            *self.knob_rows(),
            ("source", "Wan et al., Nature 2022 (fits as in aihwkit ReRamWan2022NoiseModel, g_max 40 µS)"),
        ]


@dataclass(frozen=True)
class GaussianPreset(NoisePreset):
    """Additive Gaussian weight noise, the usual sweep axis: w̃ = w + η·max|w|_group·N (t ignored)."""

    name: ClassVar[str] = "gaussian"
    eta: float = 0.02
    multiplicative: ClassVar[bool] = False

    def _program(self, weight, group, t_inference, stream, tile_rows, out):
        """w̃ = w + η·max|w|_group·N (additive) or w·(1 + η·N) (multiplicative, group ignored)."""

        def read(block: Tensor, scale: Tensor, need_ref: bool) -> tuple[None, Tensor]:
            noise = stream.normal(block.shape)
            if self.multiplicative:
                return None, noise.mul_(self.eta).add_(1.0).mul_(block)
            return None, noise.mul_(scale * self.eta).add_(block)

        return program_rows(weight, read, group=group, tile_rows=tile_rows, out=out)

    def sigma_table(self, g_values: Sequence[float], t_values: Sequence[float], **_: Any) -> list[SigmaRow]:
        """Analytical mean and std of the read-back normalised weight ŵ = w/max|w|_group (time-independent)."""
        return [SigmaRow(float(g), float(t), float(g), self.eta * (abs(g) if self.multiplicative else 1.0))
                for t in t_values for g in g_values]

    def describe(self) -> list[tuple[str, str]]:
        law = "w·(1 + η·N)" if self.multiplicative else "w + η·max|w|_group·N"
        return [("model", law + ", no time dependence"), *self.knob_rows()]


@dataclass(frozen=True)
class GaussianMultPreset(GaussianPreset):
    """Multiplicative Gaussian weight noise: w̃ = w·(1 + η·N) (group and t ignored)."""

    name: ClassVar[str] = "gaussian-mult"
    multiplicative: ClassVar[bool] = True


BUILTIN_PRESETS: tuple[type[NoisePreset], ...] = (PCMPreset, HermesPreset, ReRAMPreset, GaussianPreset,
                                                  GaussianMultPreset)
