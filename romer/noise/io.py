"""The periphery of an analog matrix-vector multiply: input DAC, output noise, ADC and tiles.

A crossbar tile of at most ``tile_rows`` inputs computes ``y = W x`` for one input vector (one token) at a time:

1. **Input range** (per tile, per token): the tile's slice of x is divided by an input scale ``r`` so that it lies
   in the DAC's range [−1, 1]. ``abs-max`` takes ``r = max |x_tile|`` of each token (aihwkit's noise management
   ABS_MAX, so nothing clips); ``static`` fixes ``r`` per tile at the ``static_percentile``-th percentile of |x|
   over the inputs of the first forward call the tile sees (aihwkit's input-range calibration from data), and
   inputs beyond ±r clip.
2. **DAC**: x̂ = clip(round(x / (r·Δ_in))·Δ_in, −1, 1), Δ_in = 2 / (2^dac_bits − 2) (aihwkit ``inp_res`` =
   1/(2^bits − 2) of the full range 2·``inp_bound``, ``inp_bound`` = 1); dac_bits 0 = no quantisation.
3. **Array**: ŷ = Ŵ x̂ with Ŵ = W / s, the weights normalised to the conductance range |Ŵ| ≤ 1: ``s`` is the
   abs-max of each tile (``weight_scaling: tile``, a tile being ``tile_rows`` inputs × ``tile_columns`` outputs)
   or of each output column inside a tile (``column``). ŷ is in the array's output units (x̂ ≤ 1, Ŵ ≤ 1).
4. **Output noise and ADC**: ŷ + σ·N (σ = ``out_noise`` in output units, so σ/``out_bound`` of the ADC's full
   scale), then round(·/Δ_out)·Δ_out with Δ_out = 2·out_bound / (2^adc_bits − 2), then clip to ±out_bound
   (out_bound 0 = no clipping). This is aihwkit's forward ``out_noise``, ``out_res`` and ``out_bound``.
5. **Bound management** ``iterative`` (aihwkit ITERATIVE): a token whose output clipped is run again with its
   input scale doubled (x̂ halved), until no output clips or the factor exceeds min(1000, 0.25/Δ_in)
   (aihwkit's ``max_bm_factor`` and ``max_bm_res``). romer decides per token (a token's own outputs clip or
   not); aihwkit's torch tile decides for the whole batch at once, so the two agree token by token.
6. **Digital side**: y_tile = ŷ_q · s · r (· the bound-management factor), and the tiles' outputs are summed
   digitally. Biases are digital and added after.

``IOConfig.ideal()`` switches all of it off: ``analog_matmul`` is then exactly ``x @ w.T``.
Formulas follow aihwkit 1.1.0 (``simulator/parameters/io.py``, ``simulator/tiles/analog_mvm.py``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from romer.errors import UserError

INPUT_RANGES = ("abs-max", "static")
WEIGHT_SCALINGS = ("tile", "column")
BOUND_MANAGEMENTS = ("none", "iterative")
MAX_BM_FACTOR = 1000.0  # aihwkit max_bm_factor
MAX_BM_RES = 0.25  # aihwkit max_bm_res: stop once the halved input step exceeds this
MAX_BITS = 24
PERCENTILE_SAMPLE = 1 << 22  # static range: at most this many |x| values enter the percentile


def _levels(bits: int) -> float:
    """Quantisation steps across the full range for ``bits`` bits (aihwkit's 1/res = 2^bits − 2)."""
    return float(2**bits - 2)


@dataclass(frozen=True)
class IOConfig:
    """The DAC/ADC periphery of every analog matmul (see the module docstring for the formulas).

    dac_bits / adc_bits: input / output quantisation (0 = none); input_range: ``abs-max`` or ``static``;
    static_percentile: % of |x| inside a static range; out_noise: output noise σ in array output units;
    out_bound: ADC clipping bound in array output units (0 = none); tile_rows / tile_columns: inputs / outputs
    per tile; weight_scaling: ``tile`` or ``column``; bound_management: ``none`` or ``iterative``.
    """

    name: str = "ideal"
    dac_bits: int = 0
    input_range: str = "abs-max"
    static_percentile: float = 99.9
    out_noise: float = 0.0
    adc_bits: int = 0
    out_bound: float = 0.0
    tile_rows: int = 512
    tile_columns: int = 512
    weight_scaling: str = "tile"
    bound_management: str = "none"

    def __post_init__(self) -> None:
        for knob in ("dac_bits", "adc_bits", "tile_rows", "tile_columns"):
            value = getattr(self, knob)
            if isinstance(value, bool) or not isinstance(value, (int, float, str)) or not _is_int(value):
                raise UserError(f"io {self.name}: {knob} must be a whole number (got {value!r})")
            object.__setattr__(self, knob, int(float(value)))
        for knob in ("static_percentile", "out_noise", "out_bound"):
            object.__setattr__(self, knob, _non_negative(self.name, knob, getattr(self, knob)))
        if self.dac_bits and not 2 <= self.dac_bits <= MAX_BITS or self.adc_bits and not 2 <= self.adc_bits <= MAX_BITS:
            raise UserError(f"io {self.name}: dac_bits and adc_bits must be 0 (off) or 2 … {MAX_BITS}")
        if self.tile_rows < 1 or self.tile_columns < 1:
            raise UserError(f"io {self.name}: tile_rows and tile_columns must be ≥ 1")
        if not 0 < self.static_percentile <= 100:
            raise UserError(f"io {self.name}: static_percentile must be in (0, 100]")
        for knob, choices in (("input_range", INPUT_RANGES), ("weight_scaling", WEIGHT_SCALINGS),
                              ("bound_management", BOUND_MANAGEMENTS)):
            if getattr(self, knob) not in choices:
                raise UserError(f"io {self.name}: {knob} must be one of {', '.join(choices)} "
                                f"(got {getattr(self, knob)!r})")
        if self.bound_management == "iterative" and not self.out_bound:
            raise UserError(f"io {self.name}: iterative bound management needs an out_bound > 0")

    @classmethod
    def ideal(cls) -> "IOConfig":
        """No DAC, no ADC, no output noise, no clipping: the matmul is exactly ``x @ w.T``."""
        return cls()

    @property
    def is_ideal(self) -> bool:
        return (not self.dac_bits and not self.adc_bits and not self.out_noise and not self.out_bound
                and self.input_range == "abs-max")

    @property
    def input_step(self) -> float:
        """Δ_in: the DAC step in units of the input range (2 / (2^bits − 2)); 0 without a DAC."""
        return 2.0 / _levels(self.dac_bits) if self.dac_bits else 0.0

    @property
    def output_step(self) -> float:
        """Δ_out: the ADC step in array output units (2·out_bound / (2^bits − 2)); 0 without an ADC."""
        return 2.0 * self.out_bound / _levels(self.adc_bits) if self.adc_bits and self.out_bound else 0.0

    @property
    def bound_factor_limit(self) -> float:
        """The largest input-scale factor iterative bound management tries (aihwkit's two stopping rules)."""
        return min(MAX_BM_FACTOR, MAX_BM_RES / self.input_step) if self.input_step else MAX_BM_FACTOR

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def describe(self) -> list[tuple[str, str]]:
        """(property, value) rows for ``romer noise show``."""
        if self.is_ideal:
            return [("io", "ideal: exact inputs and outputs (x @ W.T), no tiles")]
        rng = ("abs-max per token and tile (no clipping)" if self.input_range == "abs-max" else
               f"static per tile: {self.static_percentile:g}th percentile of |x| of the first call; beyond clips")
        return [
            ("io", self.name),
            ("DAC", f"{self.dac_bits} bit, step 2/{_levels(self.dac_bits):g} of the range" if self.dac_bits
             else "off (exact inputs)"),
            ("input range", rng),
            ("output noise", f"σ = {self.out_noise:g} output units" + (
                f" ({self.out_noise / self.out_bound:.2%} of the bound)" if self.out_bound else "")),
            ("ADC", f"{self.adc_bits} bit, step {self.output_step:.4g}" if self.output_step else "off"),
            ("output bound", f"±{self.out_bound:g} (clips)" if self.out_bound else "none"),
            ("tiles", f"{self.tile_rows} inputs × {self.tile_columns} outputs; tiles summed digitally"),
            ("weight scaling", f"abs-max per {'tile' if self.weight_scaling == 'tile' else 'output column'} → 1"),
            ("bound management", "iterative: clipped tokens rerun with halved inputs, "
             f"factor ≤ {self.bound_factor_limit:g}" if self.bound_management == "iterative" else "none"),
        ]


def _is_int(value) -> bool:
    try:
        return float(value) == int(float(value))
    except (TypeError, ValueError, OverflowError):
        return False


def _non_negative(name: str, knob: str, value) -> float:
    try:
        out = float("nan") if isinstance(value, bool) else float(value)
    except (TypeError, ValueError):
        out = float("nan")
    if not (out >= 0 and out != float("inf")):
        raise UserError(f"io {name}: {knob} must be a finite number >= 0 (got {value!r})")
    return out


# aihwkit 1.1.0 InferenceRPUConfig's forward IOParameters and tile size. Weight scaling per tile to |W| ≤ 1
# (aihwkit's default mapping leaves weights unscaled; a physical array has a largest conductance, so romer maps).
# Bound management ITERATIVE is simulated per token; aihwkit's other IO knobs (inp_noise, w_noise, ir_drop, …) are 0
# in this config and not simulated.
AIHWKIT_DEFAULT = IOConfig(name="aihwkit-default", dac_bits=7, input_range="abs-max", out_noise=0.06, adc_bits=9,
                           out_bound=12.0, tile_rows=512, tile_columns=512, weight_scaling="tile",
                           bound_management="iterative")
# aihwkit StandardHWATrainingPreset: 8-bit DAC and ADC (254 steps), out_noise 0.04, out_bound 10, 512 inputs per
# tile, column-wise weight scaling, constant noise management (nm_thres 1) behind a static input range (aihwkit
# learns it in training; romer calibrates it from data, see the module docstring), no bound management.
HWA_STANDARD = IOConfig(name="hwa-standard", dac_bits=8, input_range="static", out_noise=0.04, adc_bits=8,
                        out_bound=10.0, tile_rows=512, tile_columns=512, weight_scaling="column",
                        bound_management="none")
IO_PRESETS = {"ideal": IOConfig.ideal(), AIHWKIT_DEFAULT.name: AIHWKIT_DEFAULT, HWA_STANDARD.name: HWA_STANDARD}
IO_NAMES = tuple(IO_PRESETS)


def get_io(spec: "str | IOConfig | dict | None") -> IOConfig:
    """An IO config: a preset name (``ideal``, ``aihwkit-default``, ``hwa-standard``), a YAML/JSON file (a mapping
    of IOConfig knobs, optionally ``base: PRESET`` to start from, or under an ``io`` key), a dict or an IOConfig."""
    if spec is None:
        return IOConfig.ideal()
    if isinstance(spec, IOConfig):
        return spec
    if isinstance(spec, dict):
        return io_from_dict(spec)
    if spec in IO_PRESETS:
        return IO_PRESETS[spec]
    if Path(spec).suffix.lower() in (".yaml", ".yml", ".json") or Path(spec).is_file():
        return io_from_dict(_read_io_file(Path(spec)), default_name=Path(spec).stem)
    raise UserError(f"unknown io {spec!r}; choose one of {', '.join(IO_NAMES)}, or give an io file (.yaml)")


def io_from_dict(data: dict[str, Any], default_name: str = "custom") -> IOConfig:
    """An IOConfig from a mapping of its knobs (``base``: a preset the knobs override); UserError on unknown keys."""
    data = dict(data)
    base = data.pop("base", None)
    start = IO_PRESETS.get(base) if base is not None else IOConfig.ideal()
    if start is None:
        raise UserError(f"io base {base!r} is not one of {', '.join(IO_NAMES)}")
    knobs = {f.name for f in dataclasses.fields(IOConfig)}
    unknown = sorted(set(data) - knobs)
    if unknown:
        raise UserError(f"unknown io option {', '.join(map(repr, unknown))}; options: {', '.join(sorted(knobs))}")
    if "name" not in data:
        data["name"] = default_name if (base is None or data) else start.name
    return dataclasses.replace(start, **data)


def _read_io_file(path: Path) -> dict[str, Any]:
    import yaml

    if not path.is_file():
        raise UserError(f"io file {path} does not exist")
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not a valid io file ({type(exc).__name__})") from None
    doc = doc.get("io", doc) if isinstance(doc, dict) else doc
    if not isinstance(doc, dict):
        raise UserError(f"{path}: an io file is a mapping of io options (dac_bits, adc_bits, out_noise, …)")
    return doc


# --- the arithmetic --------------------------------------------------------------------------------------------


def tile_bounds(size: int, tile: int) -> list[tuple[int, int]]:
    """[start, stop) of each tile of at most ``tile`` along an axis of ``size``."""
    return [(a, min(a + tile, size)) for a in range(0, size, tile)]


@torch.no_grad()
def weight_scales(w: Tensor, io: IOConfig) -> list[Tensor]:
    """Per input tile, the float32 scale s ``[..., out]`` that maps each output's weights into |Ŵ| ≤ 1: the abs-max
    of its tile (``tile_rows`` × ``tile_columns``) or of its own column inside the input tile; 0 → 1.

    ``w`` is ``[..., out, in]`` (a leading expert axis allowed)."""
    out_size = w.shape[-2]
    scales = []
    for a, b in tile_bounds(w.shape[-1], io.tile_rows):
        column = w[..., a:b].abs().amax(-1).float()
        if io.weight_scaling == "tile":
            blocks = [column[..., c:d].amax(-1, keepdim=True).expand(*column.shape[:-1], d - c)
                      for c, d in tile_bounds(out_size, io.tile_columns)]
            column = torch.cat(blocks, -1)
        scales.append(torch.where(column > 0, column, torch.ones_like(column)))
    return scales


@torch.no_grad()
def static_range(x: Tensor, percentile: float) -> float:
    """The ``percentile``-th percentile of |x| (at most PERCENTILE_SAMPLE evenly strided values); 0 → 1."""
    values = x.detach().reshape(-1).abs().float()
    if values.numel() > PERCENTILE_SAMPLE:
        values = values[:: -(-values.numel() // PERCENTILE_SAMPLE)]
    if values.numel() == 0:
        return 1.0
    k = max(1, min(values.numel(), round(percentile / 100.0 * values.numel())))
    value = float(values.kthvalue(k).values)
    return value if value > 0 else 1.0


def static_ranges(x: Tensor, io: IOConfig) -> list[float]:
    """The static input range of each input tile of rows ``x [N, in]`` (``static_range`` per tile)."""
    return [static_range(x[:, a:b], io.static_percentile) for a, b in tile_bounds(x.shape[-1], io.tile_rows)]


def _input_scale(x: Tensor, io: IOConfig, fixed: float | None) -> Tensor:
    """Per token [N, 1] input scale r: the token's abs-max (0 → 1) or the static range."""
    if io.input_range == "static" and fixed is not None:
        return torch.full((x.shape[0], 1), fixed, dtype=torch.float32, device=x.device)
    peak = x.abs().amax(-1, keepdim=True)
    return peak.masked_fill_(peak == 0, 1.0)


def _dac_levels(x: Tensor, r: Tensor, io: IOConfig) -> Tensor:
    """x / r in DAC steps: round(x / (r·Δ_in)) clipped to ±1/Δ_in (x / r clipped to ±1 without a DAC)."""
    step = io.input_step or 1.0
    levels = x / (r * step)
    if io.dac_bits:
        levels.round_()
    if io.dac_bits or io.input_range == "static":
        levels.clamp_(-1.0 / step, 1.0 / step)
    return levels


def _adc_levels(u: Tensor, io: IOConfig, generator: torch.Generator | None, iterative: bool) -> Tensor | None:
    """In place on ŷ in ADC steps ``u [N, out]``: output noise, rounding, clipping at ±out_bound; returns which rows
    clipped when ``iterative`` (else None)."""
    step = io.output_step or 1.0
    if io.out_noise:
        u.add_(torch.randn(u.shape, generator=generator, device=u.device), alpha=io.out_noise / step)
    if io.output_step:
        u.round_()
    if not io.out_bound:
        return None
    clipped = (u.abs() > io.out_bound / step).any(-1) if iterative else None
    u.clamp_(-io.out_bound / step, io.out_bound / step)
    return clipped


TileMatmul = Callable[[int, Tensor, Tensor | None], Tensor]  # (tile, x̂ rows, row index or None) → W_tile x̂
RowScales = Callable[[int, Tensor | None], Tensor]  # (tile, row index or None) → s broadcastable to [rows, out]


def tiled_analog_matmul(x: Tensor, io: IOConfig, matmul: TileMatmul, scales: RowScales, generator,
                        ranges: list[float | None] | None = None) -> Tensor:
    """The IO path for rows ``x [N, in]`` (float32 result ``[N, out]``), given per tile the array product in
    weight units (``matmul``) and the weight scales s (``scales``); ``ranges``: the static input range per tile.

    Arithmetic in quantisation steps: the array multiplies the DAC's integer levels, ŷ/Δ_out = levels·W·Δ_in /
    (s·Δ_out) is noised, rounded and clipped in ADC steps, and y = that·Δ_out·s·r (few passes over the outputs)."""
    x = x.float()
    total = None
    limit = io.bound_factor_limit
    iterative = io.bound_management == "iterative"
    to_adc_steps = (io.input_step or 1.0) / (io.output_step or 1.0)
    for t, (a, b) in enumerate(tile_bounds(x.shape[-1], io.tile_rows)):
        x_tile = x[:, a:b]
        r = _input_scale(x_tile, io, ranges[t] if ranges else None)
        rows, factor, out = None, 1.0, None
        while True:
            part, r_part = (x_tile, r) if rows is None else (x_tile.index_select(0, rows), r.index_select(0, rows))
            r_part = r_part * factor
            s = scales(t, rows)
            u = matmul(t, _dac_levels(part, r_part, io), rows).float().mul_(to_adc_steps).div_(s)
            clipped = _adc_levels(u, io, generator, iterative)
            y = u.mul_(s).mul_(r_part * (io.output_step or 1.0))
            final = None if clipped is None or factor > limit else ~clipped  # None: every row is final
            if out is None:
                out = y
            elif final is None:
                out.index_copy_(0, rows, y)
            else:
                out.index_copy_(0, rows[final], y[final])
            if final is None or bool(final.all()):
                break
            rows = (torch.arange(x.shape[0], device=x.device) if rows is None else rows)[~final]
            factor *= 2.0
        total = out if total is None else total.add_(out)
    return total


def analog_matmul(x: Tensor, w: Tensor, io: IOConfig, generator: torch.Generator | None = None,
                  ranges: list[float | None] | None = None, scales: list[Tensor] | None = None) -> Tensor:
    """``x [..., in]`` times ``w [out, in]`` through the chip's periphery (module docstring): ``[..., out]`` in x's
    dtype. ``generator`` draws the output noise; ``ranges``: static input range per tile (calibrated from ``x``
    when missing); ``scales``: precomputed ``weight_scales(w, io)``. ``IOConfig.ideal()``: exactly ``x @ w.T``."""
    if io.is_ideal:
        return x @ w.T
    flat = x.reshape(-1, x.shape[-1])
    if io.input_range == "static" and ranges is None:
        ranges = static_ranges(flat, io)
    scales = weight_scales(w, io) if scales is None else scales
    bounds = tile_bounds(w.shape[-1], io.tile_rows)

    def matmul(t: int, x_hat: Tensor, rows: Tensor | None) -> Tensor:
        a, b = bounds[t]
        return x_hat.to(w.dtype) @ w[:, a:b].T

    y = tiled_analog_matmul(flat, io, matmul, lambda t, rows: scales[t], generator, ranges)
    return y.to(torch.result_type(x, w)).reshape(*x.shape[:-1], w.shape[0])
