"""The "measured" preset: a PCM-like device whose constants were fitted to a user's chip measurements.

Same device model and draw order as the ``pcm`` and ``hermes`` presets (:class:`romer.noise.presets._PhaseChangePreset`;
ĝ = g/g_max, times in s), with tabulated or polynomial constants instead of published formulas:

- programming: ĝ_prog = max(0, ĝ_T + σ_prog(ĝ_T)·N), σ_prog in units of g_max, either a polynomial in ĝ_T
  (``prog_poly``, constant first) or a lookup table (``prog_knots_g`` → ``prog_knots_sigma``);
- drift: ν = |μ_ν(ĝ_T) + σ_ν(ĝ_T)·N| (dimensionless), ĝ(t) = ĝ_prog·((t + t0)/t0)^(−ν), t0 = the first
  read of the measurements (s after the programming pulse);
- read noise: relative σ_read = Q(ĝ_prog)·√ln((t + t0 + t_read)/(2·t_read)) (the 1/f law of the PCM model,
  Q fitted per level from repeated reads), ĝ_read = max(0, ĝ(t)·(1 + σ_read·N')). As in ``pcm``, Q belongs to
  the state the device reached, ĝ_prog, not to its target: this matters once programming noise is scaled up.

Lookup tables interpolate linearly in ĝ_T between the fitted levels and hold their end values outside them;
an empty drift or read table means "not measured": ν = 0, σ_read = 0. Build one with ``romer chip fit``
(:mod:`romer.noise.fit`); :func:`read_preset_file` loads the YAML preset file it writes.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor

from romer.errors import UserError
from romer.noise import functional as F
from romer.noise.presets import _COMPENSATION, _coerce, _PhaseChangePreset

PRESET_FILE_FORMAT = "romer-measured-preset/1"
_TABLES = (("prog_knots_g", "prog_knots_sigma"), ("drift_knots_g", "drift_knots_mu", "drift_knots_sigma"),
           ("read_knots_g", "read_knots_q"))


def interp(x: Tensor, xp: tuple[float, ...], fp: tuple[float, ...]) -> Tensor:
    """Piecewise-linear f(x) through (xp, fp) (xp strictly increasing), constant beyond the ends; 0 if empty."""
    x = x.float()
    if not xp:
        return torch.zeros_like(x)
    if len(xp) == 1:
        return torch.full_like(x, fp[0])
    xs = torch.tensor(xp, dtype=torch.float32, device=x.device)
    fs = torch.tensor(fp, dtype=torch.float32, device=x.device)
    xc = x.clamp(xs[0], xs[-1])
    hi = torch.searchsorted(xs, xc.contiguous()).clamp(1, len(xp) - 1)
    x0, x1, f0, f1 = xs[hi - 1], xs[hi], fs[hi - 1], fs[hi]
    return f0 + (f1 - f0) * (xc - x0) / (x1 - x0)


def _short(values: tuple[float, ...]) -> str:
    return "[" + ", ".join(f"{v:.4g}" for v in values) + "]"


@dataclass(frozen=True)
class MeasuredPreset(_PhaseChangePreset):
    """A chip characterised by its user: fitted σ_prog(ĝ_T), μ_ν(ĝ_T), σ_ν(ĝ_T), Q(ĝ_prog) (see module doc)."""

    name: ClassVar[str] = "measured"
    units: ClassVar[dict[str, str]] = {"g_max_uS": "µS", "t0_s": "s", "t_read_s": "s"}
    prog_poly: tuple[float, ...] = ()  # σ_prog(ĝ_T) polynomial coefficients, units of g_max, constant first
    prog_knots_g: tuple[float, ...] = ()  # ĝ_T of the σ_prog lookup table
    prog_knots_sigma: tuple[float, ...] = ()  # σ_prog at those ĝ_T, units of g_max
    drift_knots_g: tuple[float, ...] = ()  # ĝ_T of the drift table
    drift_knots_mu: tuple[float, ...] = ()  # μ_ν (dimensionless)
    drift_knots_sigma: tuple[float, ...] = ()  # σ_ν (dimensionless)
    read_knots_g: tuple[float, ...] = ()  # ĝ of the read-noise table (the fitted levels)
    read_knots_q: tuple[float, ...] = ()  # Q, relative read noise per unit of the 1/f time factor

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            is_table = str(f.type).startswith("tuple")
            fixed = _table(f.name, value) if is_table else _coerce(self.name, f.name, f.type, value)
            object.__setattr__(self, f.name, fixed)
        if min(self.g_max_uS, self.t0_s, self.t_read_s) <= 0:
            raise UserError(f"{self.name}: g_max_uS, t0_s and t_read_s must be > 0")
        if bool(self.prog_poly) == bool(self.prog_knots_g):
            raise UserError("measured: give σ_prog either as prog_poly or as prog_knots_g/prog_knots_sigma "
                            "(build a measured preset with `romer chip fit` and pass its YAML file)")
        for columns in _TABLES:
            lengths = {len(getattr(self, c)) for c in columns}
            if len(lengths) != 1:
                raise UserError(f"measured: {', '.join(columns)} must have the same length")
            knots = getattr(self, columns[0])
            if any(b <= a for a, b in zip(knots, knots[1:])):
                raise UserError(f"measured: {columns[0]} must be strictly increasing")
            if any(v < 0 for c in columns for v in getattr(self, c)):
                raise UserError(f"measured: {', '.join(columns)} must be ≥ 0")

    # ------------------------------------------------------------ the fitted laws
    def sigma_prog(self, g_target: Tensor) -> Tensor:
        """σ_prog(ĝ_T) in units of g_max (before prog_noise_scale); a polynomial is clamped at ≥ 0."""
        if self.prog_poly:
            return F.polyval(self.prog_poly, g_target.float()).clamp_min(0.0)
        return interp(g_target, self.prog_knots_g, self.prog_knots_sigma)

    def drift_stats(self, g_target: Tensor) -> tuple[Tensor, Tensor]:
        """(μ_ν, σ_ν) of the drift exponent at ĝ_T (dimensionless, before drift_scale)."""
        return (interp(g_target, self.drift_knots_g, self.drift_knots_mu),
                interp(g_target, self.drift_knots_g, self.drift_knots_sigma))

    def sigma_read(self, g_prog: Tensor, t_since_program: float) -> Tensor:
        """Relative read noise Q(ĝ_prog)·√ln((t + t_read)/(2·t_read)) × read_noise_scale; t: s since programming."""
        q = interp(g_prog, self.read_knots_g, self.read_knots_q)
        return self.read_noise_scale * q * F.read_noise_time_factor(t_since_program, self.t_read_s)

    def _devices(self, g_target, t_inference, generator):
        """ĝ_prog = max(0, ĝ_T + σ_prog·N); ν = |μ_ν + σ_ν·N|;
        ĝ_t = max(0, ĝ_prog·((t + t0)/t0)^(−ν)·(1 + σ_read·N'))."""
        g_target = g_target.float()
        g_prog = F.program_conductance(g_target, self.prog_noise_scale * self.sigma_prog(g_target), generator)
        nu = self.drift_scale * F.draw_drift_exponent(*self.drift_stats(g_target), generator)
        sigma_read = self.sigma_read(g_prog, t_inference + self.t0_s)
        return g_prog, F.add_read_noise(F.drift(g_prog, nu, t_inference, self.t0_s), sigma_read, generator)

    # ------------------------------------------------------------ description
    def knob_rows(self) -> list[tuple[str, str]]:
        rows = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, tuple):
                rows.append((f.name, _short(value) if value else "—"))
            elif isinstance(value, bool):
                rows.append((f.name, "on" if value else "off"))
            else:
                rows.append((f.name, f"{value:g} {self.units.get(f.name, '')}".strip()))
        return rows

    def describe(self) -> list[tuple[str, str]]:
        if self.prog_poly:
            prog = f"({_poly_text(self.prog_poly)}) units of g_max, clamped ≥ 0, × prog_noise_scale"
        else:
            prog = (f"table over {len(self.prog_knots_g)} levels ĝ_T {_span(self.prog_knots_g)}, linear "
                    "interpolation, ends held × prog_noise_scale")
        drift = (f"table over {len(self.drift_knots_g)} levels ĝ_T {_span(self.drift_knots_g)}"
                 if self.drift_knots_g else "not measured: ν = 0")
        read = (f"table over {len(self.read_knots_g)} levels ĝ {_span(self.read_knots_g)}, at ĝ_prog"
                if self.read_knots_g else "not measured: 0")
        return [
            ("device", "measured chip (constants fitted from data), one device per weight sign; ĝ = g/g_max"),
            ("σ_prog", prog),
            ("μ_ν, σ_ν", drift + "; ν = |μ_ν + σ_ν·N| × drift_scale"),
            ("drift", "ĝ_prog·((t + t0)/t0)^(−ν), t0 = first read of the measurements"),
            ("Q", read),
            ("σ_read", "Q(ĝ_prog)·√ln((t + t0 + t_read)/(2·t_read)) × read_noise_scale, relative"),
            ("compensation", _COMPENSATION if self.drift_compensation else "off"),
            *self.knob_rows(),
            ("source", "fitted by `romer chip fit` from the user's measurements"),
        ]


def _poly_text(coeffs: tuple[float, ...]) -> str:
    """c0 + c1·ĝ − c2·ĝ² … (constant first)."""
    powers = ["", "·ĝ", "·ĝ²", "·ĝ³", "·ĝ⁴", "·ĝ⁵", "·ĝ⁶"]
    text = f"{coeffs[0]:.5g}"
    for i, c in enumerate(coeffs[1:], start=1):
        power = powers[i] if i < len(powers) else f"·ĝ^{i}"
        text += f" {'−' if c < 0 else '+'} {abs(c):.5g}{power}"
    return text


def _span(knots: tuple[float, ...]) -> str:
    return f"{knots[0]:.4g}…{knots[-1]:.4g}"


def _table(knob: str, value: Any) -> tuple[float, ...]:
    """A tuple of finite floats from a list/tuple (YAML and JSON give lists)."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise UserError(f"measured: {knob} must be a list of numbers (got {value!r})")
    out = []
    for item in value:
        try:
            number = float(item)
        except (TypeError, ValueError):
            number = float("nan")
        if isinstance(item, bool) or not math.isfinite(number):
            raise UserError(f"measured: {knob} must hold finite numbers (got {item!r})")
        out.append(number)
    return tuple(out)


def is_preset_file(name: str) -> bool:
    """Whether a --preset argument names a preset file: ends in .yaml/.yml/.json, or is an existing file."""
    return Path(name).suffix.lower() in (".yaml", ".yml", ".json") or Path(name).is_file()


def read_preset_file(path: str | Path) -> dict[str, Any]:
    """The preset dict (``name`` + knobs) stored in a preset file: a YAML/JSON mapping with a ``preset``
    mapping (as written by ``romer chip fit``) or the preset mapping itself. UserError if missing or malformed."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise UserError(f"noise preset file {path} does not exist")
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path}: not a valid preset file ({first})") from None
    stated = doc.get("format") if isinstance(doc, dict) else None
    if stated is not None and stated != PRESET_FILE_FORMAT:
        family, _, version = str(stated).rpartition("/")
        ours = PRESET_FILE_FORMAT.rpartition("/")[2]
        newer = family == PRESET_FILE_FORMAT.rpartition("/")[0] and version.isdigit() and int(version) > int(ours)
        raise UserError(f"{path}: preset file format {stated!r} is {'newer than' if newer else 'not'} the one this "
                        f"romer reads ({PRESET_FILE_FORMAT!r}){'; upgrade romer' if newer else ''}")
    data = doc.get("preset", doc) if isinstance(doc, dict) else None
    if not isinstance(data, dict) or not isinstance(data.get("name"), str):
        raise UserError(f"{path}: not a preset file (expected a 'preset' mapping with a 'name')")
    return data
