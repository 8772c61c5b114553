"""Presets by name or file: the built-in presets, and preset files (e.g. fitted by `romer chip fit`).

The one place that knows every preset class, so that ``presets`` (the physics) and ``measured`` (a preset
interpolated from measured data) need not import each other.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from romer.errors import UserError
from romer.noise.measured import MeasuredPreset, is_preset_file, read_preset_file
from romer.noise.presets import BUILTIN_PRESETS, NoisePreset

PRESETS: Mapping[str, type[NoisePreset]] = MappingProxyType({cls.name: cls for cls in BUILTIN_PRESETS})
PRESET_NAMES = tuple(PRESETS)


def _preset_class(name: str) -> type[NoisePreset]:
    """The class of a named preset: the built-ins, and "measured" (fitted from a chip's data, only from a file)."""
    if name == MeasuredPreset.name:
        return MeasuredPreset
    cls = PRESETS.get(name)
    if cls is None:
        raise UserError(f"unknown noise preset {name!r}; choose one of {', '.join(PRESET_NAMES)}, "
                        f"or give a preset file (.yaml, e.g. from `romer chip fit`)")
    return cls


def _build(name: str, overrides: dict[str, Any]) -> NoisePreset:
    cls = _preset_class(name)
    knobs = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(overrides) - set(knobs))
    if unknown:
        raise UserError(f"unknown option {', '.join(map(repr, unknown))} for noise preset {name}; "
                        f"options: {', '.join(knobs)}")
    return cls(**overrides)


def get_preset(name: str, **overrides: Any) -> NoisePreset:
    """The preset called ``name`` — or stored in the preset file ``name`` (.yaml/.yml/.json or an existing file,
    e.g. written by `romer chip fit`) — with knobs overridden (numbers may be strings); UserError otherwise."""
    if name not in PRESETS:
        if is_preset_file(name):
            data = read_preset_file(name)
            return _build(data["name"], {**{k: v for k, v in data.items() if k != "name"}, **overrides})
    return _build(name, overrides)


def preset_from_dict(data: dict[str, Any]) -> NoisePreset:
    """Rebuild a preset from :meth:`NoisePreset.to_dict` output (the "measured" preset included)."""
    if not isinstance(data, dict) or not isinstance(data.get("name"), str):
        raise UserError("a noise preset dict needs a 'name' key")
    return _build(data["name"], {k: v for k, v in data.items() if k != "name"})


def noise_label(preset: str, overrides: dict, label: str | None = None) -> str:
    """A noise spec's name in tables: its label, else the preset (file stem) with its overrides."""
    if label:
        return label
    base = Path(preset).stem if preset.endswith((".yaml", ".yml", ".json")) else preset
    knobs = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in overrides.items())
    return f"{base} ({knobs})" if knobs else base
