"""Analog compute-in-memory noise: device physics (functional), weight ↔ conductance mapping, presets.

>>> import torch
>>> from romer.noise import get_preset
>>> pcm = get_preset("pcm")
>>> w = torch.randn(8, 64, 32)                       # a fused [experts, out, in] tensor
>>> w_chip = pcm.program(w, group="expert", t_inference=86400.0, generator=torch.Generator().manual_seed(0))
>>> w_chip.shape == w.shape
True
"""

from romer.noise.mapping import MAPPING_GROUPS, from_conductance, group_abs_max, to_conductance, weight_scale
from romer.noise.presets import (
    GaussianMultPreset,
    GaussianPreset,
    HermesPreset,
    NoisePreset,
    PCMPreset,
    ReRAMPreset,
    SigmaRow,
)
from romer.noise.registry import PRESET_NAMES, get_preset, preset_from_dict

__all__ = [
    "MAPPING_GROUPS",
    "PRESET_NAMES",
    "GaussianMultPreset",
    "GaussianPreset",
    "HermesPreset",
    "NoisePreset",
    "PCMPreset",
    "ReRAMPreset",
    "SigmaRow",
    "from_conductance",
    "get_preset",
    "group_abs_max",
    "preset_from_dict",
    "to_conductance",
    "weight_scale",
]
