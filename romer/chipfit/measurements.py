"""Chip measurements: load and validate a file of conductance reads, or sample one from a device preset.

One row per read (format: docs/chip-measurements.md): ``g_target`` (target conductance, in the file's units)
or ``w_target`` (target level, always in units of g_max), ``g_read`` (the conductance read), optional ``t``
(s after the programming pulse), ``device_id`` and ``cycle`` (a device reprogrammed in a new cycle counts as
a new programmed device). Units come from a ``# units: uS`` / ``# units: normalised`` comment line or the
caller; µS values are divided by g_max (``# g_max_uS: 25``). Everything here is in normalised conductance
ĝ = g/g_max. Reads of one programmed device less than 5 % apart in time count as repeated reads at one time.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from romer.errors import UserError
from romer.noise import functional as F
from romer.noise.measured import MeasuredPreset
from romer.noise.presets import NoisePreset, _PhaseChangePreset

UNITS = {"us": "uS", "µs": "uS", "μs": "uS", "microsiemens": "uS", "normalised": "normalised",
         "normalized": "normalised", "g_max": "normalised"}
TIME_TOLERANCE = 1.05  # reads within this factor of a time group's first read belong to that group
NUMERIC = ("g_target", "w_target", "g_read", "t")


@dataclass
class Measurements:
    """Validated reads in normalised conductance. Per read: ``g_target`` ĝ_T, ``g_read`` ĝ, ``t`` (s after
    programming, or None when not measured), ``device`` (programmed-device index, or None: every read its own
    device), plus derived ``level`` / ``levels`` (distinct ĝ_T) and ``time_group`` / ``times`` (median t, s)."""

    g_target: np.ndarray
    g_read: np.ndarray
    t: np.ndarray | None
    device: np.ndarray | None
    source: str = "<memory>"
    units: str = "normalised"
    g_max_uS: float = 25.0
    notes: tuple[str, ...] = ()
    levels: np.ndarray = dataclasses.field(init=False)
    level: np.ndarray = dataclasses.field(init=False)
    times: np.ndarray | None = dataclasses.field(init=False)
    time_group: np.ndarray = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self.levels, self.level = np.unique(np.round(self.g_target, 9), return_inverse=True)
        self.time_group = np.zeros(len(self.g_read), dtype=np.int64)
        self.times = None
        if self.t is not None:
            starts = []
            for value in np.unique(self.t):
                if not starts or value > starts[-1] * TIME_TOLERANCE:
                    starts.append(value)
            self.time_group = np.searchsorted(np.array(starts), self.t, side="right") - 1
            self.times = np.array([np.median(self.t[self.time_group == i]) for i in range(len(starts))])

    @property
    def device_ids(self) -> np.ndarray:
        """Programmed-device index of every read (each read its own device when no device_id was given)."""
        return self.device if self.device is not None else np.arange(len(self.g_read))

    def summary(self) -> dict:
        """Rows, levels, devices, times and repeats, for the preset file and the report."""
        keys = self.device_ids * (len(self.times) if self.times is not None else 1) + self.time_group
        _, reads = np.unique(keys, return_counts=True)
        return {"source": self.source, "rows": int(len(self.g_read)), "units": self.units,
                "g_max_uS": float(self.g_max_uS), "levels": [float(f"{v:.6g}") for v in self.levels],
                "devices": int(len(np.unique(self.device_ids))) if self.device is not None else None,
                "times_s": [float(f"{v:.6g}") for v in self.times] if self.times is not None else None,
                "repeats_median": float(np.median(reads)), "notes": list(self.notes)}


# ---------------------------------------------------------------- loading
def load_measurements(path: str | Path, *, units: str | None = None, g_max_uS: float | None = None) -> Measurements:
    """Read and validate a CSV (or, with pyarrow, parquet) measurement file; one UserError line per problem.

    ``units`` / ``g_max_uS`` override the file's ``# units:`` / ``# g_max_uS:`` header lines.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"measurement file {path} does not exist")
    if path.suffix.lower() in (".parquet", ".pq"):
        header, columns, lines = _read_parquet(path)
    else:
        header, columns, lines = _read_csv(path)
    return _validate(path, header, columns, lines, units, g_max_uS)


def _read_csv(path: Path) -> tuple[dict[str, str], dict[str, list[str]], list[int]]:
    """(header "# key: value" pairs, column name → cells, file line number of each row)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a text (CSV) file") from None
    header: dict[str, str] = {}
    body, numbers = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if stripped.startswith("#"):
            key, sep, value = stripped.lstrip("#").partition(":")
            if sep and not body:
                header[key.strip().lower()] = value.strip()
        elif stripped:
            body.append(line)
            numbers.append(number)
    if not body:
        raise UserError(f"{path}: empty file (no header row, no measurements)")
    rows = list(csv.reader(io.StringIO("\n".join(body))))
    names = [name.strip().lower() for name in rows[0]]
    columns: dict[str, list[str]] = {name: [] for name in names}
    for row, number in zip(rows[1:], numbers[1:]):
        if len(row) != len(names):
            raise UserError(f"{path}: line {number} has {len(row)} fields, the header has {len(names)}")
        for name, cell in zip(names, row):
            columns[name].append(cell.strip())
    return header, columns, numbers[1:]


def _read_parquet(path: Path) -> tuple[dict[str, str], dict[str, list], list[int]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise UserError(f"{path}: reading parquet needs pyarrow (pip install pyarrow), "
                        "or save the file as CSV") from None
    table = pq.read_table(path)
    meta = {k.decode().lower(): v.decode() for k, v in (table.schema.metadata or {}).items()
            if k.decode().lower() in ("units", "g_max_us")}
    columns = {name.strip().lower(): table.column(name).to_pylist() for name in table.column_names}
    return meta, columns, list(range(1, table.num_rows + 1))


def _numbers(path: Path, name: str, cells: list, lines: list[int]) -> np.ndarray:
    out = np.empty(len(cells))
    for i, cell in enumerate(cells):
        try:
            out[i] = float("nan") if cell is None or cell == "" else float(cell)
        except (TypeError, ValueError):
            raise UserError(f"{path}: line {lines[i]}: {name} {cell!r} is not a number") from None
    bad = np.flatnonzero(~np.isfinite(out))
    if len(bad):
        raise UserError(f"{path}: {name} has {len(bad)} missing, NaN or infinite value(s) "
                        f"(first on line {lines[bad[0]]}); drop those rows")
    return out


def _validate(path: Path, header: dict[str, str], columns: dict[str, list], lines: list[int],
              units: str | None, g_max_uS: float | None) -> Measurements:
    if not lines:
        raise UserError(f"{path}: no measurement rows (only a header)")
    target = [c for c in ("g_target", "w_target") if c in columns]
    missing = [c for c in ("g_read",) if c not in columns] + ([] if target else ["g_target (or w_target)"])
    if missing:
        raise UserError(f"{path}: missing column(s) {', '.join(missing)}; found {', '.join(columns) or 'none'}")
    if len(target) == 2:
        raise UserError(f"{path}: give g_target or w_target, not both")
    unit_text = units if units is not None else header.get("units")
    if unit_text is None:
        raise UserError(f"{path}: units not given: add a '# units: uS' (or '# units: normalised') line or pass --units")
    unit = UNITS.get(unit_text.strip().lower())
    if unit is None:
        raise UserError(f"{path}: unknown units {unit_text!r}; use uS or normalised")
    g_max_text = g_max_uS if g_max_uS is not None else header.get("g_max_us")
    if unit == "uS" and g_max_text is None:
        raise UserError(f"{path}: µS values need g_max: add a '# g_max_uS: 25' line or pass --g-max-us")
    try:
        g_max = float(g_max_text) if g_max_text is not None else 25.0
    except (TypeError, ValueError):
        raise UserError(f"{path}: g_max_uS must be a number (got {g_max_text!r})") from None
    if not (math.isfinite(g_max) and g_max > 0):
        raise UserError(f"{path}: g_max_uS must be > 0 (got {g_max_text!r})")
    values = {name: _numbers(path, name, columns[name], lines) for name in NUMERIC if name in columns}
    for name in ("g_read", target[0]):
        negative = np.flatnonzero(values[name] < 0)
        if len(negative):
            raise UserError(f"{path}: {name} has {len(negative)} negative conductance(s) (first on line "
                            f"{lines[negative[0]]}: {values[name][negative[0]]:g}); conductances are ≥ 0")
    scale = g_max if unit == "uS" else 1.0
    g_target = values[target[0]] / (scale if target[0] == "g_target" else 1.0)
    g_read = values["g_read"] / scale
    if g_target.max() > 2.0:
        raise UserError(f"{path}: target levels reach {g_target.max():g} × g_max; check the units and g_max")
    t = values.get("t")
    if t is not None and (t <= 0).any():
        first = np.flatnonzero(t <= 0)[0]
        raise UserError(f"{path}: t must be > 0 s after programming (line {lines[first]}: {t[first]:g})")
    notes = [] if t is not None else ["no t column: every read taken at one time, drift not measured"]
    device = _device_index(path, columns, g_target, lines, notes)
    m = Measurements(g_target, g_read, t, device, str(path), unit, g_max, tuple(notes))
    if len(m.levels) < 2:
        raise UserError(f"{path}: only one target level (ĝ_T = {m.levels[0]:g}); need at least 2 levels "
                        "to fit σ_prog(ĝ_T)")
    return m


def _device_index(path: Path, columns: dict[str, list], g_target: np.ndarray, lines: list[int],
             notes: list[str]) -> np.ndarray | None:
    """Programmed-device index per read from (device_id, cycle); None without a device_id column."""
    if "device_id" not in columns:
        notes.append("no device_id column: every read counts as its own device (no drift, no read noise)")
        return None
    cycle = columns.get("cycle", [""] * len(lines))
    keys = [f"{d}\x00{c}" for d, c in zip(columns["device_id"], cycle)]
    _, device = np.unique(np.array(keys, dtype=object), return_inverse=True)
    first_target = np.full(device.max() + 1, np.nan)
    first_target[device[::-1]] = g_target[::-1]
    clash = np.flatnonzero(np.abs(first_target[device] - g_target) > 1e-9)
    if len(clash):
        i = clash[0]
        raise UserError(f"{path}: device {columns['device_id'][i]!r} (cycle {cycle[i] or '—'}) has reads at two "
                        f"target levels (line {lines[i]}); number each reprogramming with a new cycle")
    return device.astype(np.int64)


# ---------------------------------------------------------------- sampling from a preset
def _sigma_read(preset: _PhaseChangePreset, g_prog: torch.Tensor, t_since: float) -> torch.Tensor:
    """Relative read noise of a PCM-like preset at ĝ_prog, t_since s after programming."""
    if isinstance(preset, MeasuredPreset):
        return preset.sigma_read(g_prog, t_since)
    return preset.read_noise_scale * type(preset).read_sigma(g_prog, t_since, preset.t_read_s)


def sample_measurements(preset: NoisePreset, levels: Sequence[float], devices: int, times: Sequence[float],
                        repeats: int, generator: torch.Generator) -> Measurements:
    """Synthetic measurements of ``devices`` devices per target level ĝ_T (``levels``, units of g_max), each read
    ``repeats`` times at every time in ``times`` (s after the programming pulse, ≥ the preset's t0_s).

    A device's programming error and drift exponent come from ``preset._devices`` with a per-sample seed drawn
    from ``generator`` (identical at every time, read noise off); each read adds fresh read noise from
    ``generator``. PCM-like presets only (pcm, hermes, measured).
    """
    if not isinstance(preset, _PhaseChangePreset):
        raise UserError(f"sampling measurements needs a PCM-like preset (pcm, hermes, measured), got {preset.name}")
    if devices < 1 or repeats < 1 or not levels or not times:
        raise UserError("need at least one level, device, time and repeat")
    if min(times) < preset.t0_s:
        raise UserError(f"{preset.name}: reads start at t0 = {preset.t0_s:g} s after programming (got {min(times):g})")
    g_target = torch.tensor([float(g) for g in levels], dtype=torch.float32).repeat_interleave(devices)
    device_seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    quiet = dataclasses.replace(preset, read_noise_scale=0.0)
    reads = torch.empty(len(g_target), len(times), repeats)
    for j, t in enumerate(times):
        g_prog, g_drift = quiet._devices(g_target, float(t) - preset.t0_s, torch.Generator().manual_seed(device_seed))
        sigma = _sigma_read(preset, g_prog, float(t))
        for r in range(repeats):
            reads[:, j, r] = F.add_read_noise(g_drift, sigma, generator)
    shape = reads.shape
    device = np.broadcast_to(np.arange(shape[0])[:, None, None], shape).reshape(-1)
    t_col = np.broadcast_to(np.asarray(times, dtype=float)[None, :, None], shape).reshape(-1)
    return Measurements(g_target.double().numpy()[device], reads.double().numpy().reshape(-1), t_col.copy(),
                        device.copy(), source=f"sampled from preset {preset.name}",
                        g_max_uS=float(preset.g_max_uS))


def write_measurements_csv(m: Measurements, path: str | Path, *, units: str = "uS",
                           comments: Sequence[str] = ()) -> Path:
    """Write ``m`` as a measurement CSV (atomically), in µS (``units="uS"``, g_max = m.g_max_uS) or normalised."""
    from romer.io import write_text_atomic

    scale = m.g_max_uS if units == "uS" else 1.0
    out = io.StringIO()
    for line in comments:
        out.write(f"# {line}\n")
    out.write(f"# units: {units}\n# g_max_uS: {m.g_max_uS:g}\n")
    columns = ["g_target", "g_read"] + (["t"] if m.t is not None else []) + (["device_id", "cycle"]
                                                                          if m.device is not None else [])
    out.write(",".join(columns) + "\n")
    for i in range(len(m.g_read)):
        row = [f"{m.g_target[i] * scale:.9g}", f"{m.g_read[i] * scale:.7g}"]
        row += [f"{m.t[i]:g}"] if m.t is not None else []
        row += [str(m.device[i]), "0"] if m.device is not None else []
        out.write(",".join(row) + "\n")
    return write_text_atomic(path, out.getvalue())
